"""``recast-bench cost``: estimated GPU-hours of a bench before it starts, from throughput, fixed costs and the
stream's sizes.

One run (one method, one seed) over tasks t = 0..T-1, E epochs, alone on one GPU, costs::

    sum_t  E * (train_t * passes / img_s  +  epoch_fixed  +  val_fixed  +  val_t / eval_img_s)
  + sum_t  (task_fixed  +  seen_test_t / eval_img_s)          # seen_test_t: every task <= t is re-tested
  + run_start

and K runs sharing a GPU divide that by ``gain(K)``, the GPU's total throughput with K runs relative to one run
(capped by what the CPU loaders can feed: ``loader_img_s``). ``linear`` trains its head on frozen features
computed once per backbone (both flips of train, val, test) and shared by its seeds.

The figures (:class:`Figures`) come from a ``gpu-check`` JSON when one is found (``--throughput``, else
``gpu-check.json`` or ``perf/gpu-check.json``; its ``cost_inputs``, measured on the GPU named there), else from
:data:`MODELLED`, which no GPU has measured: the output says which. ``--basis`` prints every modelled factor with its
source or reason, and what each contributes (the estimate with that factor taken away).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
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
FAMILY_FACTOR = {"frozen": 1.0, "full": 1.0, "peft": 1.0, "replay": 2.0, "prompt": 1.5}
"""Forward/backward passes per training image relative to plain training (modelled): replay methods add a buffer
batch of the same size per step; L2P adds a frozen query forward (about half a training step)."""

# ---- the modelled figures: eager bf16 GPU profile, uint8 device path, one run alone on one H100 ----------------------
DEFAULT_TRAIN_IMG_S = {"vit": 4500.0, "resnet": 3500.0}
"""Training images/s, end to end, eager. ViT-S trains at 27.6 GFLOP per image (9.2 forward, times 3), so 4,500 img/s
is 12.6 % of the H100's 989 TFLOP/s bf16 dense peak; ResNet-34 (22 GFLOP) at 3,500 is 7.8 %. A 384-wide ViT at
batch 64 is launch- and memory-bound in eager mode (about half its step is unfused elementwise work)."""
DEFAULT_EVAL_IMG_S = {"vit": 12000.0, "resnet": 10000.0}
"""Evaluation images/s (a third of a training image's FLOPs, plus the loader)."""
COMPILE_SPEEDUP = {"vit": 1.4, "resnet": 1.15}
"""``trainer.compile``: if the unfused half of an eager ViT step fuses to 40 % of its time, the step takes
0.5 + 0.2 = 0.7 (1.43x); a ResNet step is mostly cuDNN convolutions, only BatchNorm/ReLU fuse. Modelled."""
BF16_SPEEDUP = 1.6
"""bf16 autocast against TF32 (the profile's other option). Modelled, see :data:`BASIS`."""
GAIN = {1: 1.0, 2: 1.3, 3: 1.45}
"""Runs per GPU -> total throughput relative to one run. Modelled, see :data:`BASIS`; ``make gpu-check`` measures 2."""
LOADER_MS_PER_IMAGE = {"uint8": 0.32, "float": 1.15}
"""CPU milliseconds per training image per core, measured on the shared 2-core CPU (README, "On a CPU": 2 workers,
224 px photos, 6,335 vs 1,739 img/s). The uint8 figure is an upper bound: without a GPU it includes the device half."""
CPUS_PER_GPU = 16
"""Host CPUs per GPU assumed for the loader cap (the lent H200 machine has 16 for one GPU)."""
EPOCH_FIXED_S, VAL_FIXED_S = 0.2, 0.1
"""Per epoch and per validation pass beyond their images: persistent workers are not respawned, but each epoch
refills the loader pipeline (the GPU waits for the first batch), logs its metrics (host syncs), and model selection
copies the state when val improved. Modelled."""
TASK_FIXED_S, COMPILE_TASK_S = 5.0, 10.0
"""Per task: a Trainer, 16 forked loader workers, the method's hooks, state files, first kernels and cuDNN
autotuning; with compile, Dynamo tracing the training and evaluation graphs again (a new Trainer per task) and
loading their kernels from the warm inductor caches. Modelled."""
RUN_START_S = 20.0
"""Per run: imports (about 10 s), the CUDA context, the backbone, opening the data cache."""
BASIS = {
    "compile": "if the unfused half of an eager ViT step fuses to 40 % of its time, the step takes 0.7 (1.4x); "
    "a ResNet step is mostly cuDNN convolutions, only BatchNorm/ReLU fuse (1.15x)",
    "bf16": "twice the tensor-core peak of TF32 (989 vs 494 TFLOP/s) on the matmuls, half the bytes on the "
    "memory-bound rest: 1.6x for the mix",
    "loader": "1.15 vs 0.32 CPU ms per image per core (measured here, README), 16 CPUs per GPU",
    "gain": "without MPS the GPU time-slices between processes: a second run only fills what one run leaves idle "
    "(fixed per-epoch and per-task work, evaluation's host work, launch gaps): 1.3 for 2 runs, 1.45 for 3",
    "features": "linear's frozen features once per backbone, instead of 100 epochs forward through the backbone",
}
"""Source or reason of each modelled factor (``recast-bench cost --basis`` prints them)."""


@dataclass
class Figures:
    """One backbone family's cost figures for one run alone on one GPU (GPU profile)."""

    img_s: float
    """Steady training images/s, end to end (after warm-up, device-synchronised), a plain (PEFT) step."""
    eval_img_s: float
    epoch_fixed_s: float
    """Per epoch beyond its images: loader iterator reset, end-of-epoch work, model selection's state copy."""
    val_fixed_s: float
    """Per validation pass beyond its images."""
    task_fixed_s: float
    """Per task beyond its epochs and its test evaluation: Trainer, hooks, state files, the first epoch's extra cost
    (loader start, compile, autotuning)."""
    run_start_s: float
    """Per run: process start, imports, model build."""
    gain: dict[int, float] = field(default_factory=lambda: dict(GAIN))
    loader_img_s: float | None = None
    """What the CPU loaders of one GPU can feed, all its runs together (``None``: no cap)."""
    source: str = "modelled"
    measured: list[str] = field(default_factory=list)
    """The fields measured on a GPU (the rest are modelled)."""


def modelled(bb: str, compiled: bool, loader: str = "uint8", cpus_per_gpu: int = CPUS_PER_GPU) -> Figures:
    """The modelled figures of backbone family ``bb`` (``vit``/``resnet``) in the GPU profile."""
    speed = COMPILE_SPEEDUP[bb] if compiled else 1.0
    return Figures(
        img_s=DEFAULT_TRAIN_IMG_S[bb] * speed,
        eval_img_s=DEFAULT_EVAL_IMG_S[bb] * speed,
        epoch_fixed_s=EPOCH_FIXED_S,
        val_fixed_s=VAL_FIXED_S,
        task_fixed_s=TASK_FIXED_S + (COMPILE_TASK_S if compiled else 0.0),
        run_start_s=RUN_START_S,
        loader_img_s=cpus_per_gpu * 1000.0 / LOADER_MS_PER_IMAGE[loader],
    )


def default_methods(backbone: str) -> list[str]:
    """The entries ``make bench BACKBONE=backbone`` runs (the protocol cards' bench rows)."""
    from recast_bench.protocol.cards import bench_rows

    return [c.id for c in bench_rows(backbone)]


def family(method: str) -> str:
    base = method.split("@", 1)[0]
    return FAMILIES.get(base, "peft")


def bb_family(backbone: str) -> str:
    return "resnet" if "resnet" in backbone else "vit"


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


def measured_figures(path: Path | None) -> tuple[dict[str, Figures], str | None]:
    """``(figures by backbone family, source)`` from a gpu-check JSON's ``cost_inputs``; ``({}, None)`` when no JSON
    is found. A field the check did not measure keeps its modelled value (and is not listed as measured)."""
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
        gpu = data.get("device", {}).get("name") or "a GPU"
        compiled = bool(data.get("compile"))
        out = {}
        for bb, inputs in (data.get("cost_inputs") or {}).items():
            fig = modelled(bb, compiled)
            got = {k: v for k, v in inputs.items() if k in Figures.__dataclass_fields__ and v is not None}
            gains = {int(k): float(v) for k, v in (got.pop("gain", None) or {}).items()}
            fig = replace(fig, **got, gain={**fig.gain, **gains}, source=f"measured on {gpu} in {p}")
            fig.measured = sorted([*got, *(f"gain[{k}]" for k in gains)])
            out[bb] = fig
        return out, str(p)
    return {}, None


def run_hours(method: str, sizes: list[TaskSize], epochs: int, fig: Figures, runs_per_gpu: int = 1) -> float:
    """GPU-hours of one run of ``method`` with ``runs_per_gpu`` runs sharing each GPU."""
    k = max(1, runs_per_gpu)
    gain = fig.gain.get(k) or max(fig.gain.values())
    ev = fig.eval_img_s
    if family(method) == "frozen":  # features once per backbone, shared by its seeds (see estimate)
        return (sum(2 * s.train + s.val + s.test for s in sizes) / ev + fig.run_start_s) / gain / 3600.0
    # training images/s of the GPU, its K runs together, as far as the CPU loaders keep up
    rate = min(fig.img_s * gain, fig.loader_img_s or float("inf")) / FAMILY_FACTOR[family(method)]
    train = epochs * sum(s.train for s in sizes) / rate
    n = len(sizes)
    per_epoch = n * (fig.epoch_fixed_s + fig.val_fixed_s) + sum(s.val for s in sizes) / ev
    per_task = n * fig.task_fixed_s + sum(s.test * (n - t) for t, s in enumerate(sizes)) / ev
    return (train + (epochs * per_epoch + per_task + fig.run_start_s) / gain) / 3600.0


def card_epochs(method: str, backbone: str, default: int) -> int:
    """Epochs per task of a bench entry (``NAME`` or ``NAME@VARIANT``) as its protocol card sets them (InfLoRA: the
    paper's 10), else ``default``."""
    from recast_bench.protocol.cards import family_of, find

    name, _, variant = method.partition("@")
    card = find(name, family_of(backbone), [variant or None])
    value = card.values.get("trainer.epochs") if card is not None else None
    return int(value.value) if value is not None else default


def default_runs_per_gpu(backbone: str) -> int:
    """``$RUNS_PER_GPU``, else what ``make bench`` would choose on this machine's GPUs, else (no GPU here: the
    estimate is for a GPU machine) the launcher's default without a gpu-check.json."""
    from recast_bench.slot import DEFAULT_RUNS_PER_GPU, choose_here

    if os.environ.get("RUNS_PER_GPU"):
        return int(os.environ["RUNS_PER_GPU"])
    k, gpus, _ = choose_here(backbone)
    return k if gpus else DEFAULT_RUNS_PER_GPU


def profile_compiles(bb: str) -> bool:
    """Whether the GPU profile turns torch.compile on (the modelled figures follow the profile)."""
    from recast_bench.engine.device import profile_values

    return bool(profile_values("gpu", bb).get("compile", False))


@dataclass
class Estimate:
    backbone: str
    tasks: list[str]
    train_images_per_epoch: int
    epochs: int
    seeds: int
    runs: int
    runs_per_gpu: int
    gpu_hours: float
    source: str | None
    figures: dict[str, Any]
    rows: list[dict[str, Any]]


def estimate(
    methods: list[str],
    sizes: list[TaskSize],
    epochs: int,
    seeds: int,
    backbone: str,
    figures: Figures,
    runs_per_gpu: int = 1,
    epochs_of: dict[str, int] | None = None,
) -> Estimate:
    """``epochs_of`` gives a method's own epochs per task where it differs from ``epochs`` (its protocol card)."""
    rows = []
    for m in methods:
        ep = (epochs_of or {}).get(m, epochs)
        hours = run_hours(m, sizes, ep, figures, runs_per_gpu)
        # linear's features are computed once per backbone; each seed only trains a head on them
        total = hours + (seeds - 1) * figures.run_start_s / 3600.0 if family(m) == "frozen" else hours * seeds
        rows.append({"method": m, "family": family(m), "epochs": ep, "hours_per_run": hours, "hours": total})
    return Estimate(
        backbone=backbone,
        tasks=[s.name for s in sizes],
        train_images_per_epoch=sum(s.train for s in sizes),
        epochs=epochs,
        seeds=seeds,
        runs=len(methods) * seeds,
        runs_per_gpu=runs_per_gpu,
        gpu_hours=sum(r["hours"] for r in rows),
        source=figures.source,
        figures=asdict(figures),
        rows=rows,
    )


def contributions(
    methods: list[str],
    sizes: list[TaskSize],
    epochs: int,
    seeds: int,
    backbone: str,
    runs_per_gpu: int,
    epochs_of: dict[str, int],
) -> list[tuple[str, float, str]]:
    """The modelled estimate, then ``(what, GPU-hours with it, basis)`` for each modelled speed factor of the GPU
    profile changed alone: what compile, bf16, the uint8 device path, runs per GPU and the linear feature cache each
    contribute."""
    bb = bb_family(backbone)
    compiled = profile_compiles(bb)
    base = modelled(bb, compiled)

    def hours(fig: Figures, k: int = runs_per_gpu) -> float:
        return estimate(methods, sizes, epochs, seeds, backbone, fig, k, epochs_of).gpu_hours

    def without_feature_cache() -> float:  # linear's epochs forward through the frozen backbone, at evaluation speed
        frozen = [m for m in methods if family(m) == "frozen"]
        rest = estimate([m for m in methods if m not in frozen], sizes, epochs, seeds, backbone, base, runs_per_gpu,
                        epochs_of).gpu_hours  # fmt: skip
        forward = replace(base, img_s=base.eval_img_s)
        return rest + sum(
            estimate(["finetune"], sizes, epochs_of.get(m, epochs), seeds, backbone, forward, runs_per_gpu).gpu_hours
            for m in frozen
        )

    tf32 = replace(base, img_s=base.img_s / BF16_SPEEDUP, eval_img_s=base.eval_img_s / BF16_SPEEDUP)
    return [
        (f"modelled estimate ({runs_per_gpu} per GPU, compile {'on' if compiled else 'off'})", hours(base), ""),
        (f"torch.compile {'off' if compiled else 'on'}", hours(modelled(bb, not compiled)), BASIS["compile"]),
        ("TF32 instead of bf16", hours(tf32), BASIS["bf16"]),
        ("the float CPU loader instead of the uint8 device path", hours(modelled(bb, compiled, "float")),
         BASIS["loader"]),
        ("one run per GPU", hours(base, 1), BASIS["gain"]),
        ("no linear feature cache", without_feature_cache(), BASIS["features"]),
    ]  # fmt: skip


def format_estimate(est: Estimate, stream: str) -> str:
    measured = est.figures.get("measured") or []
    src = est.source if measured else "MODELLED figures: no GPU measured them (run `make gpu-check` on the GPU)"
    lines = [
        f"cost: {est.runs} runs of {est.backbone} on {stream} ({len(est.tasks)} tasks, "
        f"{est.train_images_per_epoch:,} train images/epoch, {est.epochs} epochs), {est.runs_per_gpu} per GPU: "
        f"about {est.gpu_hours:.1f} GPU-hours ({src})",
        f"  {'method':<26}{'family':<8}{'epochs':>7}{'h/run':>8}{'hours':>9}",
    ]
    for r in est.rows:
        lines.append(f"  {r['method']:<26}{r['family']:<8}{r['epochs']:>7}{r['hours_per_run']:>8.2f}{r['hours']:>9.2f}")
    f = est.figures
    shown = ("img_s", "eval_img_s", "epoch_fixed_s", "val_fixed_s", "task_fixed_s", "run_start_s")
    figs = ", ".join(f"{k} {f[k]:,.1f}{'' if k in measured else '*'}" for k in shown)
    gain = f["gain"].get(est.runs_per_gpu) or max(f["gain"].values())
    mark = "" if f"gain[{est.runs_per_gpu}]" in measured else "*"
    lines.append(f"  figures: {figs}, gain at {est.runs_per_gpu} per GPU {gain:.2f}{mark}  (* modelled)")
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
    k = args.runs_per_gpu or default_runs_per_gpu(spec.name)
    bb = bb_family(spec.name)
    measured, _ = measured_figures(args.throughput)
    fig = measured.get(bb) or modelled(bb, profile_compiles(bb))
    sizes = stream_sizes(cfg.stream)
    est = estimate(methods, sizes, epochs, seeds, spec.name, fig, k, epochs_of)
    print(format_estimate(est, args.stream))
    if args.basis:
        print("  basis (modelled, no GPU measured; GPU-hours of these rows with the factor taken away):")
        for what, hours, why in contributions(methods, sizes, epochs, seeds, spec.name, k, epochs_of):
            print(f"    {what:<62}{hours:>7.1f} h" + (f"  [{why.splitlines()[0]}]" if why else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(est), indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cost", help="estimated GPU-hours of a bench (throughput, fixed costs, the stream's sizes)")
    p.add_argument("--backbone", default="vit_small")
    p.add_argument("--stream", default="six")
    p.add_argument("--methods", nargs="*", help="method entries (NAME or NAME@VARIANT); default: make bench's rows")
    p.add_argument("--seeds", default="42", help='seeds as make passes them, e.g. "42 1998 3142592"')
    p.add_argument("--throughput", type=Path, help="a gpu-check JSON with measured figures")
    p.add_argument("--runs-per-gpu", type=int,
                   help="concurrent runs per GPU (default: $RUNS_PER_GPU, else make bench's choice; 2 here without "
                   "a GPU)")  # fmt: skip
    p.add_argument("--basis", action="store_true", help="print the modelled factors and what each contributes")
    p.add_argument("--json", help="also write the estimate to this file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.epochs=5")
    p.set_defaults(func=cmd_cost)


if __name__ == "__main__":  # pragma: no cover
    from recast_bench.cli import main

    sys.exit(main(["cost", *sys.argv[1:]]))
