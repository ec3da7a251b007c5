"""``recast-bench cost``: estimated GPU-hours of a bench before it starts, from throughput and the stream's sizes.

Per run (one method, one seed) over tasks t = 0..T-1 with epochs E::

    train images  = sum_t train_t * E * replay factor        at the method family's training images/s
    eval images   = sum_t val_t * E + sum_t test_t * (T - t)  at the backbone's inference images/s

(every seen task is re-tested after each task). ``linear`` trains on cached frozen features: its cost is one
forward pass over both flips of train plus val and test, per backbone (the features are reused across seeds).

Throughput comes from a ``gpu-check`` JSON when one is found (``--throughput``, else ``gpu-check.json`` or
``perf/gpu-check.json``): the median images/s of its passing cases per method family and backbone. Families or
backbones it does not cover use the documented defaults below, and the output flags them as estimates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recast_bench.errors import UserError

FAMILIES = {
    "linear": "frozen",
    "ewc": "full", "lwf": "full", "gdumb": "full", "finetune": "full",
    "er-ace": "replay", "derpp": "replay",
    "l2p": "prompt",
}  # fmt: skip
"""Method -> throughput family; everything else (RECAST, adapters, LoRA family, masks) is ``peft``."""

# Images per second on one H100 in the GPU profile (bf16, TF32, channels_last for ResNet), end to end. ESTIMATES:
# ViT-S fwd+bwd is ~28 GFLOP/img (see shared notes, gpu-review.md), so 40 % of bf16 peak would be ~14k img/s; these
# defaults assume a loader-bound ~1/3 of that. Replace them with measured figures: `make gpu-check` writes them.
DEFAULT_TRAIN_IMG_S = {"vit": 4500.0, "resnet": 3500.0}
DEFAULT_EVAL_IMG_S = {"vit": 12000.0, "resnet": 10000.0}
FAMILY_FACTOR = {"frozen": 1.0, "full": 1.0, "peft": 1.0, "replay": 2.0, "prompt": 1.5}
"""Forward/backward passes per training image relative to plain training: replay methods add a buffer batch of
the same size per step; L2P adds a frozen query forward (about half a training step)."""


def default_methods(backbone: str) -> list[str]:
    """The entries ``make bench BACKBONE=backbone`` runs (the protocol cards' bench rows)."""
    from recast_bench.protocol.cards import bench_rows

    return [c.id for c in bench_rows(backbone)]


def family(method: str) -> str:
    base = method.split("@", 1)[0]
    return FAMILIES.get(base, "peft")


@dataclass
class TaskSize:
    name: str
    train: int
    val: int
    test: int


def stream_sizes(stream: Any) -> list[TaskSize]:
    """Per-task split sizes of a composed stream config, from the datasets' official counts (no data needed)."""
    if stream.name == "synthetic":
        sizes = list(stream.classes_per_task)[: stream.num_tasks]
        out = [
            TaskSize(f"syn{i}", n * stream.train_per_class, n * stream.val_per_class, n * stream.test_per_class)
            for i, n in enumerate(sizes)
        ]
    else:
        from recast_bench.data.sources import PAPER_ORDER, SPECS

        names = list(stream.tasks) if stream.tasks else list(PAPER_ORDER)
        out = []
        for name in names:
            if name not in SPECS:
                raise UserError(f"unknown dataset {name!r} in stream.tasks")
            exp = SPECS[name].expected
            splits = dict(exp.splits)
            if stream.split == "pooled":
                total = exp.pool or sum(splits.values())
                tr, va, te = (round(total * f) for f in stream.pooled_fractions)
            elif "val" in splits:
                tr, va, te = splits["train"], splits["val"], splits["test"]
            else:
                va = round(splits["train"] * stream.val_fraction)
                tr, te = splits["train"] - va, splits["test"]
            out.append(TaskSize(name, tr, va, te))
    cap_t, cap_e = stream.max_train_per_task, stream.max_eval_per_task
    for s in out:
        if cap_t:
            s.train = min(s.train, cap_t)
        if cap_e:
            s.val, s.test = min(s.val, cap_e), min(s.test, cap_e)
    return out


def measured_throughput(path: Path | None) -> tuple[dict[tuple[str, str], float], dict[str, float], str | None]:
    """``(train img/s by (family, backbone family), eval img/s by backbone family, source)`` from a gpu-check JSON."""
    candidates = [path] if path else [Path("gpu-check.json"), Path("perf/gpu-check.json")]
    for p in candidates:
        if p is None or not p.is_file():
            if path is not None:
                raise UserError(f"{p} not found")
            continue
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise UserError(f"{p} is not valid JSON ({e})") from None
        if data.get("device", {}).get("type") != "cuda":
            if path is not None:
                raise UserError(f"{p} was measured on {data.get('device', {}).get('type', '?')}, not on a GPU")
            continue
        train: dict[tuple[str, str], list[float]] = {}
        evals: dict[str, list[float]] = {}
        for case in data.get("cases", []):
            if case.get("status") != "pass" or not case.get("train_img_s"):
                continue
            bb = "resnet" if "resnet" in case["backbone"] else "vit"
            factor = FAMILY_FACTOR[family(case["method"])]
            train.setdefault((family(case["method"]), bb), []).append(float(case["train_img_s"]) * factor)
            if case.get("eval_img_s"):
                evals.setdefault(bb, []).append(float(case["eval_img_s"]))
        # stored per family as "plain-step" images/s (factor applied back in run_hours)
        return (
            {k: statistics.median(v) for k, v in train.items()},
            {k: statistics.median(v) for k, v in evals.items()},
            str(p),
        )
    return {}, {}, None


def run_hours(
    method: str, sizes: list[TaskSize], epochs: int, bb: str, train_ips: dict, eval_ips: dict
) -> tuple[float, bool]:
    """GPU-hours of one run of ``method``, and whether any figure used was a default estimate."""
    fam = family(method)
    ev = eval_ips.get(bb)
    estimated = ev is None
    ev = DEFAULT_EVAL_IMG_S[bb] if ev is None else ev
    if fam == "frozen":  # features once (both flips of train, val, test); head training and re-tests are negligible
        return sum(2 * s.train + s.val + s.test for s in sizes) / ev / 3600.0, estimated
    base = train_ips.get((fam, bb)) or train_ips.get(("peft", bb))
    if base is None:
        base, estimated = DEFAULT_TRAIN_IMG_S[bb], True
    n = len(sizes)
    eval_imgs = sum(s.val * epochs for s in sizes) + sum(s.test * (n - t) for t, s in enumerate(sizes))
    train_imgs = sum(s.train for s in sizes) * epochs * FAMILY_FACTOR[fam]
    return (train_imgs / base + eval_imgs / ev) / 3600.0, estimated


def card_epochs(method: str, backbone: str, default: int) -> int:
    """Epochs per task of a bench entry (``NAME`` or ``NAME@VARIANT``) as its protocol card sets them (InfLoRA: the
    paper's 10), else ``default``."""
    from recast_bench.protocol.cards import family_of, find

    name, _, variant = method.partition("@")
    card = find(name, family_of(backbone), [variant or None])
    value = card.values.get("trainer.epochs") if card is not None else None
    return int(value.value) if value is not None else default


def estimate(
    methods: list[str],
    sizes: list[TaskSize],
    epochs: int,
    seeds: int,
    backbone: str,
    throughput: Path | None,
    epochs_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``epochs_of`` gives a method's own epochs per task where it differs from ``epochs`` (its protocol card)."""
    bb = "resnet" if "resnet" in backbone else "vit"
    train_ips, eval_ips, source = measured_throughput(throughput)
    rows = []
    for m in methods:
        ep = (epochs_of or {}).get(m, epochs)
        hours, est = run_hours(m, sizes, ep, bb, train_ips, eval_ips)
        # linear's features are computed once per backbone and shared by its seeds
        total = hours * (1 if family(m) == "frozen" else seeds)
        rows.append(
            {"method": m, "family": family(m), "epochs": ep, "hours_per_run": hours, "hours": total, "estimated": est}
        )
    return {
        "backbone": backbone,
        "tasks": [s.name for s in sizes],
        "train_images_per_epoch": sum(s.train for s in sizes),
        "epochs": epochs,
        "seeds": seeds,
        "runs": len(methods) * seeds,
        "gpu_hours": sum(r["hours"] for r in rows),
        "throughput_source": source,
        "rows": rows,
    }


def format_estimate(est: dict[str, Any], stream: str) -> str:
    flag = any(r["estimated"] for r in est["rows"])
    src = f"measured in {est['throughput_source']}" if est["throughput_source"] else "no gpu-check JSON"
    lines = [
        f"cost: {est['runs']} runs of {est['backbone']} on {stream} ({len(est['tasks'])} tasks, "
        f"{est['train_images_per_epoch']:,} train images/epoch, {est['epochs']} epochs): about "
        f"{est['gpu_hours']:.1f} GPU-hours ({'ESTIMATE: default throughput, ' if flag else ''}{src})",
        f"  {'method':<26}{'family':<8}{'epochs':>7}{'h/run':>8}{'hours':>9}",
    ]
    for r in est["rows"]:
        mark = " *" if r["estimated"] else ""
        lines.append(
            f"  {r['method']:<26}{r['family']:<8}{r['epochs']:>7}{r['hours_per_run']:>8.2f}{r['hours']:>9.2f}{mark}"
        )
    if flag:
        lines.append(
            "  * default throughput estimate (recast_bench/cost.py); run `make gpu-check` on the GPU to measure"
        )
    return "\n".join(lines)


def cmd_cost(args: argparse.Namespace) -> int:
    from recast_bench.backbones import get_spec
    from recast_bench.config import compose_config

    spec = get_spec(args.backbone)
    # only the stream and trainer overrides matter here (make bench passes its whole EXTRA)
    keep = tuple(f"{pre}{g}" for pre in ("", "+", "++") for g in ("stream", "trainer", "paths"))
    overrides = [o for o in args.overrides if o.startswith(keep)]
    cfg = compose_config([f"backbone={args.backbone}", f"stream={args.stream}", *overrides])
    methods = args.methods or default_methods(spec.name)
    seeds = len(args.seeds.split()) if args.seeds else 1
    epochs = int(cfg.trainer.epochs)
    # An explicit trainer.epochs applies to every run, as it does in make bench; otherwise each row's card decides.
    explicit = any(o.lstrip("+").startswith("trainer.epochs=") for o in overrides)
    epochs_of = {} if explicit else {m: card_epochs(m, spec.name, epochs) for m in methods}
    est = estimate(methods, stream_sizes(cfg.stream), epochs, seeds, spec.name, args.throughput, epochs_of)
    print(format_estimate(est, args.stream))
    if args.json:
        Path(args.json).write_text(json.dumps(est, indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cost", help="estimated GPU-hours of a bench (throughput x the stream's sizes)")
    p.add_argument("--backbone", default="vit_small")
    p.add_argument("--stream", default="six")
    p.add_argument("--methods", nargs="*", help="method entries (NAME or NAME@VARIANT); default: make bench's rows")
    p.add_argument("--seeds", default="42", help='seeds as make passes them, e.g. "42 1998 3142592"')
    p.add_argument("--throughput", type=Path, help="a gpu-check JSON with measured images/s")
    p.add_argument("--json", help="also write the estimate to this file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.epochs=5")
    p.set_defaults(func=cmd_cost)


if __name__ == "__main__":  # pragma: no cover
    from recast_bench.cli import main

    sys.exit(main(["cost", *sys.argv[1:]]))
