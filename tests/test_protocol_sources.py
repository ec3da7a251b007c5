"""Every default has a source: each value line of conf/method/*.yaml carries a comment, and every card value a
source kind and a reference (ours also a flag); the protocol table shows them."""

from __future__ import annotations

import re

from recast_bench.config import CONF_DIR
from recast_bench.protocol import all_cards
from recast_bench.protocol.cards import SOURCES

VALUE_LINE = re.compile(r"^\s*[\w.+-]+:\s*(?P<value>[^#\s][^#]*?)\s*(?P<comment>#.*)?$")


def uncommented_values(text: str) -> list[str]:
    """Lines setting a value (not a mapping header, not an empty mapping) without a ``#`` comment."""
    bad = []
    for line in text.splitlines():
        m = VALUE_LINE.match(line)
        if m and m.group("value") not in ("{}", "|", ">") and not m.group("comment"):
            bad.append(line.strip())
    return bad


def test_the_checker_catches_a_bare_value() -> None:
    assert uncommented_values("x:\n  lr: 1.0e-3\n  rank: 1  # paper\n  sub:\n") == ["lr: 1.0e-3"]


def test_every_method_yaml_value_names_its_source() -> None:
    missing = {
        p.name: bad for p in sorted((CONF_DIR / "method").glob("*.yaml")) if (bad := uncommented_values(p.read_text()))
    }
    assert not missing, f"values without a source comment: {missing}"


def test_every_card_value_has_a_source() -> None:
    cards = all_cards()
    assert len(cards) >= 27
    for card in cards:
        for key, v in card.values.items():
            assert v.source in SOURCES and v.ref, f"{card.id} {key}"
            assert v.source != "ours" or v.flag, f"{card.id} {key}: ours without a flag"
            for alt in v.alt:
                assert alt["source"] in SOURCES and alt["ref"], f"{card.id} {key} alt"


def test_protocol_table_marks_sources_and_flags() -> None:
    from recast_bench.protocol import load
    from recast_bench.protocol.render import COLUMNS, row

    dora = next(c for c in load("table2")[1] if c.id == "dora")
    r = dict(zip(COLUMNS, row(dora, measured=41472), strict=True))
    assert r["batch"] == "128 (A)" and r["epochs"] == "100 (P)"
    assert "alpha=2.0 (U*)" in r["method_settings"] and "targets=q,k,v (P)" in r["method_settings"]
    assert r["flagged"] == "method.dora.alpha" and r["count"] == 41472 and r["verdict"] == "consistent"
    recast = next(c for c in load("table2")[1] if c.id == "recast")
    assert "2e-6 P" in row(recast)[COLUMNS.index("paper_params")] and "44" in row(recast)[COLUMNS.index("verdict")]


def test_method_yaml_holds_only_real_overrides() -> None:
    """One home per value: a conf/method/NAME.yaml sets only NAME's keys, each to something its dataclass lacks
    (defaults live in the dataclasses, the paper's values with their sources on the cards)."""
    import dataclasses

    import yaml

    from recast_bench.registry import METHODS, load_all

    load_all()
    repeats = []
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        assert set(doc) == {path.stem}, f"{path.name} configures {sorted(doc)}: a file sets its own method only"
        fields = {f.name: f for f in dataclasses.fields(METHODS.get(path.stem).Config)}
        for key, value in (doc[path.stem] or {}).items():
            f = fields[key]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value == default or (isinstance(default, tuple) and list(default) == value):
                repeats.append(f"{path.name}: {key}")
    assert not repeats, f"values that repeat the dataclass default: {repeats}"


def test_plain_methods_get_no_other_methods_values() -> None:
    """``adaptformer`` alone composes no ``recast`` block (its composite's values come from its card)."""
    from recast_bench.config import compose_config

    for name in ("adaptformer", "piggyback"):
        cfg = compose_config([f"method=[{name}]", f"method_name={name}"])
        assert set(cfg.method) == {name}, sorted(cfg.method)
