"""Protocol cards: one card per paper row, loaded from ``cards/*.yaml`` and validated.

A card says how one row of the paper (Table 1, Table 2, or a figure's setting) is run: the method, its variant, and
every hyperparameter that matters, each with its value and its source. Sources, in order of precedence:

* ``paper``: the paper's text or tables;
* ``authors``: the authors' public code (appledora/RECAST_ICLR25);
* ``official``: the method's own official code (or avalanche-lib for the rows the paper ran through avalanche);
* ``ours``: our own choice, always with a ``flag`` saying why.

Where the paper and the authors' code disagree, ``alt`` records the other setting and how to run it by name.
Cards are plain data: this module only reads and checks them (no torch import), so ``make`` can list rows cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

SOURCES = ("paper", "authors", "official", "ours")
CARD_FILES = ("table1", "table2", "figures")
CONSISTENT = "consistent"
FRACTION_TOLERANCE = 0.10
"""Relative tolerance of "count matches the paper's fraction of P": the paper prints one or two digits."""


class CardError(ValueError):
    """A card file that breaks the schema (a bug in the cards, not a user mistake)."""


@dataclass(frozen=True)
class Value:
    """One hyperparameter of a card: its value and where it comes from."""

    key: str
    """``trainer.<field>``, ``method.<part>.<field>``, or ``mimic.<field>`` (Neural Mimicry, recorded only)."""
    value: Any
    source: str
    ref: str
    flag: str | None = None
    """Why we chose it (required when ``source`` is ``ours``)."""
    apply: bool = True
    """False: recorded and checked, but set by something else (a variant's preset, the mimicry procedure)."""
    alt: tuple[dict, ...] = ()
    """Other settings with their source and how to run them (``run``: a variant name or overrides)."""

    @property
    def flagged(self) -> bool:
        return self.source == "ours"


@dataclass(frozen=True)
class Card:
    """One paper row (or an extra, clearly named row of ours)."""

    id: str
    """The bench entry: ``NAME`` or ``NAME@VARIANT`` (``make bench`` runs it as ``--method NAME`` plus the variant)."""
    table: str
    """``table1``, ``table2`` or ``figures``."""
    paper_table: str
    label: str
    method: str
    family: str
    backbone: str
    variant: str | None
    values: dict[str, Value]
    count: int | None
    """Expected per-task trainable count on the real architecture, head excluded."""
    paper_params: str | None
    paper_fraction: float | None
    verdict: str
    """``consistent``, or the recorded reason our count does not match the paper's fraction."""
    total_params: int | None
    extra: bool = False
    """True for rows the paper does not have (e.g. RECAST with SVD init): ours, named apart."""
    bench: bool = True
    notes: tuple[str, ...] = ()
    experiment: str | None = None
    sweep: dict[str, list] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Figures: expected per-task count per sweep point (``groups=6,templates=2,sets=1`` -> count)."""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.method.split("+"))

    def applied(self) -> dict[str, Value]:
        return {k: v for k, v in self.values.items() if v.apply and not k.startswith("mimic.")}

    def fraction(self) -> float | None:
        return None if self.count is None or not self.total_params else self.count / self.total_params

    def consistent(self) -> bool | None:
        """Whether ``count / P`` matches the paper's fraction within :data:`FRACTION_TOLERANCE` (None: no number)."""
        ours = self.fraction()
        if ours is None or self.paper_fraction is None:
            return None
        if self.paper_fraction == 0:
            return ours == 0
        return abs(ours / self.paper_fraction - 1) <= FRACTION_TOLERANCE


def _value(key: str, raw: Any, where: str) -> Value:
    if not isinstance(raw, dict) or "value" not in raw:
        raise CardError(f"{where}: {key} must be a mapping with value, source, ref")
    unknown = set(raw) - {"value", "source", "ref", "flag", "apply", "alt"}
    if unknown:
        raise CardError(f"{where}: {key} has unknown fields {sorted(unknown)}")
    source = raw.get("source")
    if source not in SOURCES:
        raise CardError(f"{where}: {key} source must be one of {', '.join(SOURCES)}, got {source!r}")
    if not raw.get("ref"):
        raise CardError(f"{where}: {key} has no ref (section, table or file)")
    if source == "ours" and not raw.get("flag"):
        raise CardError(f"{where}: {key} is our choice but has no flag saying why")
    head = key.split(".")
    if head[0] not in ("trainer", "method", "mimic") or len(head) != (3 if head[0] == "method" else 2):
        raise CardError(f"{where}: bad key {key!r} (trainer.F, method.PART.F or mimic.F)")
    alt = tuple(raw.get("alt") or ())
    for a in alt:
        if not isinstance(a, dict) or a.get("source") not in SOURCES or "value" not in a or not a.get("ref"):
            raise CardError(f"{where}: {key} alt entries need value, source and ref")
    return Value(key, raw["value"], source, str(raw["ref"]), raw.get("flag"), bool(raw.get("apply", True)), alt)


def _recipe_values(recipes: dict, ref: str, where: str) -> dict[str, Value]:
    name, _, part = ref.partition(":")
    if name not in recipes:
        raise CardError(f"{where}: unknown recipe {name!r}")
    out = {}
    for key, raw in recipes[name].items():
        if "{part}" in key and not part:
            raise CardError(f"{where}: recipe {name!r} needs a part ({name}:PART)")
        k = key.replace("{part}", part)
        out[k] = _value(k, raw, f"{where} recipe {name}")
    return out


def _card(doc: dict, raw: dict, file: str) -> Card:
    where = f"{file}.yaml row {raw.get('id')!r}"
    required = ("id", "label", "method")
    if any(k not in raw for k in required):
        raise CardError(f"{where}: needs {', '.join(required)}")
    values: dict[str, Value] = {}
    for ref in raw.get("recipes") or ():
        values.update(_recipe_values(doc.get("recipes") or {}, ref, where))
    for key, v in (raw.get("hparams") or {}).items():
        values[key] = _value(key, v, where)
    parts = raw["method"].split("+")
    for key in values:
        if key.startswith("method.") and key.split(".")[1] not in parts:
            raise CardError(f"{where}: {key} names a part that is not in {raw['method']!r}")
    verdict = raw.get("verdict", CONSISTENT)
    if not isinstance(verdict, str) or not verdict:
        raise CardError(f"{where}: verdict must be 'consistent' or a reason")
    variant = raw.get("variant")
    name, _, id_variant = str(raw["id"]).partition("@")
    if doc["table"] != "figures" and name != raw["method"]:
        raise CardError(f"{where}: id must be the method name, optionally @variant")
    if doc["table"] != "figures" and id_variant != (variant or "") and "@" in str(raw["id"]):
        raise CardError(f"{where}: id variant {id_variant!r} differs from variant {variant!r}")
    return Card(
        id=str(raw["id"]),
        table=doc["table"],
        paper_table=str(raw.get("paper_table", doc["paper_table"])),
        label=str(raw["label"]),
        method=raw["method"],
        family=str(raw.get("family", doc.get("family"))),
        backbone=str(raw.get("backbone", doc.get("backbone"))),
        variant=variant,
        values=values,
        count=raw.get("count"),
        paper_params=raw.get("paper_params"),
        paper_fraction=raw.get("paper_fraction"),
        verdict=verdict,
        total_params=raw.get("total_params", doc.get("total_params")),
        extra=bool(raw.get("extra", False)),
        bench=bool(raw.get("bench", doc["table"] != "figures")),
        notes=tuple(raw.get("notes") or ()),
        experiment=raw.get("experiment"),
        sweep=dict(raw.get("sweep") or {}),
        counts=dict(raw.get("counts") or {}),
    )


def _load_text(file: str) -> str:
    return resources.files("recast_bench.protocol").joinpath("cards", f"{file}.yaml").read_text()


@cache
def load(file: str) -> tuple[dict, tuple[Card, ...]]:
    """The header (title, backbone, total_params, ...) and the cards of ``cards/<file>.yaml``."""
    doc = yaml.safe_load(_load_text(file))
    if not isinstance(doc, dict) or "table" not in doc or "rows" not in doc:
        raise CardError(f"{file}.yaml: needs table and rows")
    cards = tuple(_card(doc, raw, file) for raw in doc["rows"])
    ids = [(c.id, c.family) for c in cards]
    if len(set(ids)) != len(ids):
        raise CardError(f"{file}.yaml: duplicate row ids")
    header = {k: v for k, v in doc.items() if k not in ("rows", "recipes")}
    return header, cards


def all_cards() -> list[Card]:
    return [c for f in CARD_FILES for c in load(f)[1]]


def family_of(backbone: str) -> str:
    """Family of a backbone name without importing the backbone registry (every resnet* is a ResNet)."""
    return "resnet" if backbone.startswith("resnet") else "vit"


def _table_rows(family: str) -> list[Card]:
    """The rows of Tables 1 and 2 for ``family``, in the paper's order."""
    return [c for f in ("table1", "table2") for c in load(f)[1] if c.family == family]


def bench_rows(backbone: str) -> list[Card]:
    """The rows ``make bench BACKBONE=backbone`` runs: its family's paper table in the paper's order, then extras."""
    rows = [c for c in _table_rows(family_of(backbone)) if c.bench]
    return [c for c in rows if not c.extra] + [c for c in rows if c.extra]


def find(method: str, family: str, variants: list[str | None] = ()) -> Card | None:  # type: ignore[assignment]
    """The card for ``method`` on ``family``: ``method@variant`` for the first variant that has one, else ``method``,
    else the method's first row in the paper's order (its headline setting, e.g. RoSA's sparse MLP)."""
    rows = _table_rows(family)
    table = {c.id: c for c in rows}
    for v in variants:
        if v and f"{method}@{v}" in table:
            return table[f"{method}@{v}"]
    if method in table:
        return table[method]
    if any(v for v in variants):
        return None  # a variant the paper has no row for: no card rather than another variant's values
    return next((c for c in rows if c.method == method and not c.extra), None)


def by_id(card_id: str, family: str) -> Card | None:
    return next((c for c in all_cards() if c.id == card_id and c.family == family), None)
