"""Every protocol card against the engine: one test per paper row (Tables 1 and 2, plus our extra rows).

For each card:

* ``values``: ``recast-bench run --method ROW --backbone B`` (``ROW``: the card's id, ``NAME[@VARIANT]``, the entry
  ``make bench`` runs) composes a config whose trainer, built method config(s) and resolved Neural Mimicry settings
  hold exactly the card's values, records the card id, and reports no departure (``protocol.overridden`` /
  ``unapplied`` empty);
* ``count``: the method built on the real architecture (random weights, no training, no mimicry iterations: counts
  do not depend on them) trains exactly the card's per-task count, head excluded.

Failures name every differing value (``key: card X, engine Y``) so the cards and the defaults can be reconciled.
The figures' cards are checked against their ``conf/experiment`` files and their sweep points' counts.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from recast_bench.config import CONF_DIR, compose_config
from recast_bench.protocol import load
from recast_bench.protocol.apply import _same
from recast_bench.protocol.cards import CONSISTENT, Card, bench_rows

ROWS = [c for f in ("table1", "table2") for c in load(f)[1]]
RECORDED_ONLY = {"mimic.optimizer", "mimic.keep"}
"""Procedure facts with no config field (RMSprop, the lowest-loss copy): A's mimicry tests check them."""


def _cli_config(card: Card, backbone: str, extra: list[str] = ()):  # noqa: ANN202
    """The config ``recast-bench run --method ROW_ID --backbone ...`` composes (``recast@svd`` as the row's id)."""
    from recast_bench.cli import build_parser, run_config

    args = build_parser().parse_args(["run", "--method", card.id, "--backbone", backbone])
    args.overrides = list(extra)
    return run_config(args)


def _engine_values(card: Card, cfg) -> dict[str, object]:  # noqa: ANN001
    """key -> the value the engine uses (or a ``<missing ...>`` marker) for every checkable key of ``card``."""
    from recast_bench.engine.build import build_method

    method = build_method(card.method, cfg.method, card.family)
    parts = {p.name: p for p in getattr(method, "parts", [method])}
    trainer = OmegaConf.to_object(cfg.trainer)
    out: dict[str, object] = {}
    for key in card.values:
        head, *rest = key.split(".")
        if key in RECORDED_ONLY:
            continue
        if head == "trainer":
            out[key] = getattr(trainer, rest[0], "<missing trainer field>")
        elif head == "method":
            pcfg = parts[rest[0]].cfg
            out[key] = getattr(pcfg, rest[1], f"<missing {type(pcfg).__name__}.{rest[1]}>")
        else:
            rcfg = parts["recast"].cfg
            resolve = getattr(rcfg, "mimic_config", None)
            if resolve is None:
                out[key] = "<no RecastConfig.mimic_config>"
                continue
            mimic = resolve().resolved(card.family)
            out[key] = getattr(mimic, rest[0], f"<missing MimicConfig.{rest[0]}>")
    return out


@pytest.mark.parametrize("card", ROWS, ids=[f"{c.table}-{c.id}" for c in ROWS])
def test_card_values_are_the_engine_values(card: Card) -> None:
    cfg = _cli_config(card, card.backbone)
    diffs = []
    protocol = OmegaConf.to_container(cfg.protocol)
    if protocol["card"] != card.id:
        diffs.append(f"card chosen: {protocol['card']!r}, expected {card.id!r}")
    diffs += [f"{k}: set to something else by a conf/ yaml file" for k in protocol["overridden"]]
    diffs += [f"{k}: the engine has no such setting (not applied)" for k in protocol["unapplied"]]
    for key, got in _engine_values(card, cfg).items():
        want = card.values[key].value
        if not _same(want if not isinstance(want, list) else list(want), list(got) if isinstance(got, tuple) else got):
            diffs.append(f"{key}: card {want!r}, engine {got!r}")
    assert not diffs, f"{card.table} row {card.id!r} ({card.label}):\n  " + "\n  ".join(diffs)


# ---- per-task counts on the real architectures ------------------------------------------------------------------
def _count(card: Card, tmp_path) -> tuple[int, int]:  # noqa: ANN001
    """(per-task trainable count, backbone parameters before the method) of ``card`` on its real backbone."""
    from recast_bench.backbones import build_backbone, num_features
    from recast_bench.engine.build import build_method
    from recast_bench.engine.learner import trainable_count
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel
    from recast_bench.registry import METHODS, load_all

    load_all()
    extra = ["method.recast.mimic_iters=0", "method.recast.cache=false"] if "recast" in card.parts else []
    avalanche = METHODS.get(card.parts[0]).runner == "avalanche"
    if avalanche:  # the strategy needs a stream: two tiny synthetic tasks (counts do not depend on the data)
        extra += ["++stream.num_tasks=2", "++stream.classes_per_task=[2,3]", "++stream.train_per_class=2"]
        extra += ["++stream.val_per_class=1", "++stream.test_per_class=1"]
    cfg = _cli_config(card, card.backbone, extra)
    torch.manual_seed(0)
    bb, spec, _ = build_backbone(card.backbone, allow_random_init=True, weights_dir=str(tmp_path / "none"))
    backbone_params = sum(p.numel() for p in bb.parameters())
    method = build_method(card.method, cfg.method, spec.family)
    method.ctx = RunContext(
        backbone_name=card.backbone, family=spec.family, cache_dir=str(tmp_path), seed=0, image_size=spec.image_size
    )
    model = TaskModel(bb, num_features(bb))
    if avalanche:
        from recast_bench.data.stream import build_stream

        tasks = build_stream(cfg.stream, image_size=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learner = method.make_learner(model, tasks, OmegaConf.to_object(cfg.trainer), 0, "protocol")
        return learner.adapter.trainable_params(learner.strategy), backbone_params
    method.setup(model)
    return trainable_count(method, model), backbone_params


@pytest.mark.parametrize("card", ROWS, ids=[f"{c.table}-{c.id}" for c in ROWS])
def test_card_count_on_the_real_architecture(card: Card, tmp_path) -> None:
    count, backbone_params = _count(card, tmp_path)
    # P of the cards: the pretrained model with its 1000-class ImageNet head (features x 1000 + 1000).
    features = 512 if card.family == "resnet" else 384
    assert backbone_params + features * 1000 + 1000 == card.total_params
    assert count == card.count, (
        f"{card.table} row {card.id!r}: engine trains {count:,} per task, card says {card.count:,} "
        f"(paper: {card.paper_params}; card verdict: {card.verdict})"
    )


# ---- the cards themselves ----------------------------------------------------------------------------------------
def test_verdicts_match_the_counts() -> None:
    """'consistent' exactly when count / P is within tolerance of the paper's fraction; otherwise a reason."""
    for card in ROWS:
        ok = card.consistent()
        if card.verdict == CONSISTENT:
            assert ok is True, f"{card.id}: marked consistent but {card.fraction():.3g} vs paper {card.paper_fraction}"
        else:
            assert ok is not True and len(card.verdict) > 20, f"{card.id}: a reason is recorded but the count fits"


def test_every_paper_row_has_a_card() -> None:
    from recast_bench.report import paper

    for table, file in (("table1_resnet34", "table1"), ("table2_vit_small", "table2")):
        want = [r["method"] + (f"@{r['variant']}" if r.get("variant") else "") for r in paper.load(table)["rows"]]
        cards = [c.id for c in load(file)[1] if not c.extra]
        assert cards == want, f"{file}: cards {cards} vs the paper's rows {want}"
    assert len(load("table1")[1]) - sum(c.extra for c in load("table1")[1]) == 12
    assert len(load("table2")[1]) - sum(c.extra for c in load("table2")[1]) == 13


def test_extra_rows_are_flagged_ours() -> None:
    extras = {(c.table, c.id) for c in ROWS if c.extra}
    assert extras == {("table1", "recast@svd"), ("table2", "recast@svd"), ("table2", "adaptformer@authors")}
    for c in ROWS:
        if c.extra:
            assert c.paper_fraction is None or c.verdict != CONSISTENT or c.id == "adaptformer@authors"
    assert load("table2")[1][-2].values["method.recast.variant"].flagged


def test_bench_runs_exactly_the_cards(tmp_path) -> None:
    """``make bench`` reads its rows from the cards (no list of its own), in the paper's order, extras last."""
    import shutil
    import subprocess

    text = (CONF_DIR.parent / "mk" / "bench.mk").read_text()
    assert "recast_bench.protocol list --backbone $(BACKBONE)" in text
    assert "BENCH_METHODS_resnet" not in text and "BENCH_METHODS_vit" not in text
    assert [c.id for c in bench_rows("resnet34")] == [c.id for c in load("table1")[1]]
    assert [c.id for c in bench_rows("vit_tiny")] == [c.id for c in load("table2")[1]]
    if shutil.which("make"):
        probe = tmp_path / "probe.mk"
        probe.write_text("probe:\n\t@echo $(BENCH_METHODS)\n")
        for backbone, file in (("resnet_tiny", "table1"), ("vit_small", "table2")):
            out = subprocess.run(
                ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", str(probe), "probe",
                 f"BACKBONE={backbone}"],
                cwd=CONF_DIR.parent, capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            assert out == [c.id for c in load(file)[1]]
    assert "subst @" not in text, "NAME@VARIANT is split by recast_bench.protocol.rows only"
    if shutil.which("make"):
        from recast_bench.protocol.rows import parse_row

        entries = ["recast@svd", "linear", "recast+rosa@full", "adaptformer@authors"]
        probe.write_text(
            "probe:\n\t@echo $(foreach e,$(BENCH_RUN_METHODS),$(call bench_method,$(e))/$(call bench_variant,$(e)))\n"
        )
        out = subprocess.run(
            ["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", str(probe), "probe",
             f"BENCH_RUN_METHODS={' '.join(entries)}", f"BENCH_ROOT={tmp_path}"],
            cwd=CONF_DIR.parent, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        rows = [parse_row(e) for e in entries]
        assert out == [f"{r.name}/{''.join(r.variant_overrides())}" for r in rows]


def test_runs_record_the_card_and_user_overrides_win() -> None:
    melo = next(c for c in ROWS if c.id == "melo")
    cfg = _cli_config(melo, "vit_tiny", ["trainer.batch_size=7", "method.melo.alpha=2"])
    assert cfg.protocol.card == "melo"
    assert cfg.trainer.batch_size == 7 and cfg.method.melo.alpha == 2
    assert set(cfg.protocol.overridden) == {"trainer.batch_size", "method.melo.alpha"}
    assert cfg.trainer.grad_clip == melo.values["trainer.grad_clip"].value  # the card, beneath the user
    tiny = compose_config(["method=[melo]", "method_name=melo", "backbone=vit_tiny", "trainer=tiny"])
    assert tiny.trainer.epochs == 8, "a trainer yaml the user chose wins over the card"
    off = compose_config(["method=[melo]", "method_name=melo", "++protocol.card=none"])
    assert off.protocol.card is None and off.trainer.grad_clip is None
    assert compose_config(["method=[finetune]", "method_name=finetune"]).protocol.card is None


# ---- figures -----------------------------------------------------------------------------------------------------
FIGURES = list(load("figures")[1])


@pytest.mark.parametrize("card", [c for c in FIGURES if c.experiment], ids=lambda c: c.id)
def test_figure_cards_match_their_experiments(card: Card) -> None:
    raw = yaml.safe_load((CONF_DIR / "experiment" / f"{card.experiment}.yaml").read_text())
    sweep = {k: [type(v[0])(x) if v and isinstance(v[0], int) else x for x in str(s).split(",")]
             for (k, s), v in zip(raw["hydra"]["sweeper"]["params"].items(), card.sweep.values())}  # fmt: skip
    assert sweep == card.sweep, f"{card.id}: experiment sweeps {sweep}, card {card.sweep}"
    cfg = compose_config([f"experiment={card.experiment}", "backbone=vit_small"])
    from recast_bench.engine.build import build_method

    rcfg = build_method("recast", cfg.method, "vit").cfg
    diffs = [
        f"{k}: card {v.value!r}, engine {getattr(rcfg, k.split('.')[-1], '<missing>')!r}"
        for k, v in card.values.items()
        if k.startswith("method.recast.") and not _same(v.value, getattr(rcfg, k.split(".")[-1], "<missing>"))
    ]
    assert not diffs, f"{card.id}:\n  " + "\n  ".join(diffs)


def _point_overrides(point: str) -> list[str]:
    return [f"method.recast.{kv}" for kv in point.split(",")]


@pytest.mark.parametrize("card", [c for c in FIGURES if c.counts], ids=lambda c: c.id)
def test_figure_counts(card: Card, tmp_path) -> None:
    """Per-task count of each ViT-S sweep point (other backbones' points are recorded, not built here)."""
    from recast_bench.backbones import build_backbone
    from recast_bench.engine.build import build_method
    from recast_bench.engine.learner import trainable_count
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel

    built: dict[str, int] = {}
    for point, want in card.counts.items():
        if point.startswith("backbone="):
            if point != "backbone=vit_small":
                continue
            ov: list[str] = []
        else:
            ov = _point_overrides(point)
        base = [f"method.recast.{k.split('.')[-1]}={_yaml(v.value)}" for k, v in card.applied().items()
                if k.startswith("method.recast.") and not any(o.startswith(k + "=") for o in ov)]  # fmt: skip
        cfg = compose_config(["method=[recast]", "method_name=recast", "backbone=vit_small", *base, *ov,
                              "method.recast.mimic_iters=0", "method.recast.cache=false"])  # fmt: skip
        method = build_method("recast", cfg.method, "vit")
        structure = repr((method.cfg.spec(), method.cfg.sets))  # points differing only in mimicry share a count
        if structure in built:
            assert built[structure] == want, f"{card.id} {point}"
            continue
        torch.manual_seed(0)
        bb, spec, _ = build_backbone("vit_small", allow_random_init=True, weights_dir=str(tmp_path / "none"))
        method.ctx = RunContext(backbone_name="vit_small", family="vit", cache_dir=str(tmp_path), image_size=224)
        model = TaskModel(bb, bb.num_features)
        method.setup(model)
        built[structure] = trainable_count(method, model)
        assert built[structure] == want, f"{card.id} {point}"


def _yaml(v: object) -> str:
    return "null" if v is None else str(v)


def test_card_values_are_dataclass_fields_or_recorded() -> None:
    """Every method/trainer key of every card names a real setting, so a typo cannot hide as 'not applied'."""
    from recast_bench.config import TrainerConfig
    from recast_bench.registry import METHODS, load_all

    load_all()
    missing = []
    for card in [*ROWS, *FIGURES]:
        for key in card.values:
            head, *rest = key.split(".")
            if head == "trainer" and rest[0] not in {f.name for f in dataclasses.fields(TrainerConfig)}:
                missing.append(f"{card.id}: {key}")
            if head == "method" and rest[1] not in {f.name for f in dataclasses.fields(METHODS.get(rest[0]).Config)}:
                missing.append(f"{card.id}: {key}")
    assert not missing, "card keys the engine does not have:\n  " + "\n  ".join(missing)


def test_sweep_jobs_get_the_card_beneath_the_experiment() -> None:
    """``python -m recast_bench.sweep`` validates Hydra's own composition; it applies the card the same way."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recast_bench.sweep import _validated

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        raw = compose(config_name="config", overrides=["experiment=recast_sets", "backbone=vit_small"])
    cfg = _validated(raw)
    assert cfg.protocol.card == "recast" and cfg.trainer.grad_clip == 1.0 and cfg.trainer.batch_size == 128
    assert cfg.method.recast.target == "attn+mlp" and cfg.method.recast.sets == 1  # the experiment's values win


def test_a_variant_departure_is_recorded() -> None:
    """recast+melo with RECAST's SVD init still gets the recast+melo card, and the run says it departs from it."""
    card = next(c for c in ROWS if c.id == "recast+melo")
    cfg = _cli_config(card, "vit_small", ["method.recast.variant=svd"])
    assert cfg.protocol.card == "recast+melo" and list(cfg.protocol.overridden) == ["method.recast.variant"]
    custom = ["method.rosa.variant=custom", "method.rosa.lora_targets=[q]", "method.rosa.sparse_targets=[fc1]"]
    custom.append("method.rosa.density=0.1")
    rosa = compose_config(["method=[rosa]", "method_name=rosa", "backbone=vit_small", *custom])
    assert rosa.protocol.card is None  # a variant the paper has no row for gets no card
