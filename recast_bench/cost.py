"""``recast-bench cost``: estimated GPU-hours of a bench before it starts, from each row's counted FLOPs, the GPU's
throughput per FLOP, fixed costs and the stream's sizes.

A run's work (:mod:`recast_bench.perf.work`) is its training, hook and evaluation FLOPs (each row's step counted
exactly on the real architecture, :mod:`recast_bench.perf.flops`; the Avalanche strategies' extra passes from their
sources and settings), the images its CPU loaders deliver, and host-bound seconds (EWC's penalty loop). One run
alone on one GPU costs::

    max(FLOPs / achieved FLOP/s, loaded images / loader images/s)
  + epochs x epoch_fixed + validations x val_fixed + tasks x task_fixed + run_start + host-bound seconds

with the achieved FLOP/s of a compiled bf16 step, of an eager one (the Avalanche strategies and the data-driven
hooks) and of evaluation. K runs sharing a GPU divide the GPU part by ``gain(K)`` (capped by the loaders, which feed
all K) and the fixed part by ``gain(K)`` too (the other runs fill what one leaves idle). ``linear`` trains a head on
frozen features computed once per backbone and shared by its seeds.

The figures (:class:`Figures`) come from a ``gpu-check`` JSON when one is found (``--throughput``, else
``gpu-check.json`` or ``perf/gpu-check.json``; its ``cost_inputs``, measured on the GPU named there: the achieved
FLOP/s is its steady RECAST images/s times RECAST's counted FLOPs), else from the modelled MFU of an H100 SXM
(:mod:`recast_bench.perf.mfu`, every figure with its source) and :data:`FIXED`. The output says which. ``--basis``
prints every modelled factor with its source or reason, and what each contributes (the estimate with that factor
taken away or changed).
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
from recast_bench.perf import mfu as M
from recast_bench.perf.flops import StepFlops, load_table, row_flops
from recast_bench.perf.work import TaskSize, Work, lightning_work, row_work, settings_of
from recast_bench.protocol.rows import parse_row

FIXED = {"epoch_fixed_s": 0.2, "val_fixed_s": 0.1, "task_fixed_s": 5.0, "run_start_s": 20.0}
"""Modelled fixed seconds. Per epoch and per validation beyond their images: persistent workers are not respawned, but
each epoch refills the loader pipeline (the GPU waits for the first batch), logs its metrics (host syncs), and model
selection copies the state when val improved. Per task: a Trainer, forked loader workers, the method's hooks, state
files, first kernels and cuDNN autotuning (with compile, :data:`COMPILE_TASK_S` more). Per run: imports (about 10 s),
the CUDA context, the backbone, opening the data cache."""
COMPILE_TASK_S = 10.0
"""Per task with compile: Dynamo tracing the training and evaluation graphs again (a new Trainer per task) and loading
their kernels from the warm inductor caches. Modelled."""
GAIN = {1: 1.0, 2: 1.3, 3: 1.45}
"""Runs per GPU -> total throughput relative to one run. Modelled (see ``BASIS["gain"]``); gpu-check measures 2."""
LOADER_MS_PER_IMAGE = {"uint8": 0.32, "float": 1.15}
"""CPU milliseconds per training image per core, measured on the shared 2-core CPU (README, "On a CPU": 2 workers,
224 px photos, 6,335 vs 1,739 img/s). The uint8 figure is an upper bound: without a GPU it includes the device half."""
CPUS_PER_GPU = 16
"""Host CPUs per GPU assumed for the loader cap (the lent H200 machine has 16 for one GPU)."""
BF16_SPEEDUP = 1.6
"""bf16 autocast against TF32 (the profile's other option), modelled: see ``BASIS["bf16"]``."""
BASIS = {
    "gain": "without MPS the GPU time-slices between processes: a second run only fills what one run leaves idle "
    "(fixed per-epoch and per-task work, evaluation's host work, launch gaps): 1.3 for 2 runs, 1.45 for 3",
    "bf16": "twice the tensor-core peak of TF32 (989 vs 494 TFLOP/s) on the matmuls, half the bytes on the "
    "memory-bound rest: 1.6x for the mix",
    "loader": "1.15 vs 0.32 CPU ms per image per core (measured here, README), 16 CPUs per GPU",
    "fixed": "0.2 s per epoch, 0.1 s per validation, 5 s per task (+10 s compiling), 20 s per run: modelled",
    "features": "linear's frozen features once per backbone, instead of 100 epochs forward through the backbone",
    "ewc": "EWC's flat penalty: 437 counted aten ops per step plus 11 per earlier experience, 5 us each of "
    "host work (ours)",
    "strategies": "avalanche-lib 0.6 sources: EWC's importance pass, LwF's teacher and second pass, ER-ACE/DER++ "
    "replay batches, DER++'s buffer logits (counted FLOPs; not a modelled factor)",
}
"""Source or reason of each modelled factor besides the MFU (``recast-bench cost --basis`` prints them)."""


@dataclass
class Figures:
    """One backbone family's cost figures for one run alone on one GPU (GPU profile)."""

    tflops: dict[str, float]
    """Achieved TFLOP/s of a training step: ``compiled`` (the engine's rows) and ``eager`` (Avalanche, hooks)."""
    eval_tflops: dict[str, float]
    epoch_fixed_s: float
    val_fixed_s: float
    task_fixed_s: float
    """Per task beyond its epochs and its test evaluation: Trainer, hooks, state files, the first epoch's extra cost
    (loader start, compile, autotuning)."""
    run_start_s: float
    gain: dict[int, float] = field(default_factory=lambda: dict(GAIN))
    loader_img_s: dict[str, float] = field(default_factory=dict)
    """What the CPU loaders of one GPU feed, all its runs together, per input path (empty: no cap)."""
    card: str = "H100 SXM"
    peak_tflops: float | None = M.H100_BF16_TFLOPS
    source: str = "modelled"
    measured: list[str] = field(default_factory=list)
    """The fields measured on a GPU (the rest are modelled)."""

    def mfu(self, kind: str = "compiled") -> float | None:
        return self.tflops[kind] / self.peak_tflops if self.peak_tflops else None


def bb_family(backbone: str) -> str:
    return "resnet" if "resnet" in backbone else "vit"


def loader_caps(cpus_per_gpu: int = CPUS_PER_GPU, float_for_all: bool = False) -> dict[str, float]:
    caps = {path: cpus_per_gpu * 1000.0 / ms for path, ms in LOADER_MS_PER_IMAGE.items()}
    return {path: caps["float"] for path in caps} if float_for_all else caps


def modelled(bb: str, compiled: bool, mfu: dict[str, dict[str, float]] | None = None) -> Figures:
    """The modelled figures of backbone family ``bb`` (``vit``/``resnet``) on one H100 SXM in the GPU profile
    (``compiled``: whether the profile compiles; ``mfu``: other MFUs, e.g. for the basis)."""
    m = (mfu or M.modelled_mfu(load_table()["references"]))[bb]
    peak = M.H100_BF16_TFLOPS
    engine = m["compiled"] if compiled else m["eager"]
    return Figures(
        tflops={"compiled": engine * peak, "eager": m["eager"] * peak},
        eval_tflops={"compiled": engine * peak, "eager": m["eager"] * peak},
        **{**FIXED, "task_fixed_s": FIXED["task_fixed_s"] + (COMPILE_TASK_S if compiled else 0.0)},
        loader_img_s=loader_caps(),
    )


def measured_figures(path: Path | None) -> tuple[dict[str, Figures], str | None]:
    """``(figures by backbone family, source)`` from a gpu-check JSON's ``cost_inputs``; ``({}, None)`` when no JSON
    is found. The achieved FLOP/s is the measured steady RECAST images/s times RECAST's counted FLOPs at the card's
    batch; eager steps keep the modelled eager/compiled ratio; a field the check did not measure keeps its modelled
    value (and is not listed as measured)."""
    from recast_bench.perf.gpu import bf16_peak_tflops

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
        out = {bb: _from_inputs(bb, inputs, compiled, gpu, bf16_peak_tflops(gpu), f"measured on {gpu} in {p}")
               for bb, inputs in (data.get("cost_inputs") or {}).items()}  # fmt: skip
        return out, str(p)
    return {}, None


def _timed_row(inputs: dict[str, Any]) -> tuple[str, str]:
    """``(backbone, row)`` of the runs gpu-check timed (its ``from``: ``timing/BACKBONE/ROW#tag``; RECAST)."""
    case = next(iter(inputs.get("from") or []), "")
    parts = case.split("#", 1)[0].split("/")
    backbone = inputs.get("backbone") or (parts[1] if len(parts) == 3 else "")
    return backbone, parts[2] if len(parts) == 3 else "recast"


def _from_inputs(bb: str, inputs: dict[str, Any], compiled: bool, gpu: str, peak: float | None, src: str) -> Figures:
    fig = replace(modelled(bb, compiled), card=gpu, peak_tflops=peak, source=src)
    base = modelled(bb, True)
    ratio = base.tflops["eager"] / base.tflops["compiled"]
    got = {k: v for k, v in inputs.items() if k in FIXED and v is not None}
    gains = {int(k): float(v) for k, v in (inputs.get("gain") or {}).items()}
    fig = replace(fig, **got, gain={**fig.gain, **gains})
    measured = [*got, *(f"gain[{k}]" for k in gains)]
    backbone, row = _timed_row(inputs)
    flops = row_flops(backbone, row) if backbone else None
    if flops is not None and inputs.get("img_s"):
        s = settings_of(row, backbone)
        achieved = inputs["img_s"] * flops.train(s.batch) / 1e3
        kind = "compiled" if compiled else "eager"
        other = achieved * ratio if compiled else achieved / ratio
        fig.tflops = {kind: achieved, ("eager" if compiled else "compiled"): other}
        measured.append(f"tflops[{kind}]")
        if inputs.get("eval_img_s"):
            ev = inputs["eval_img_s"] * flops.eval_image(s.eval_batch) / 1e3
            fig.eval_tflops = {kind: ev, ("eager" if compiled else "compiled"): ev * (ratio if compiled else 1 / ratio)}
            measured.append(f"eval_tflops[{kind}]")
    fig.measured = sorted(measured)
    return fig


# ---- the arithmetic -----------------------------------------------------------------------------------------------
def gpu_seconds(w: Work, fig: Figures) -> float:
    """GPU seconds of ``w``'s training and evaluation FLOPs at ``fig``'s achieved FLOP/s (one run alone, no fixed
    costs, no loader limit)."""
    return sum(w.train[kind] / fig.tflops[kind] + w.eval[kind] / fig.eval_tflops[kind] for kind in w.train) / 1e3


def run_seconds(w: Work, fig: Figures, runs_per_gpu: int = 1) -> float:
    """GPU seconds of one run's work ``w`` with ``runs_per_gpu`` runs sharing each GPU."""
    k = max(1, runs_per_gpu)
    gain = fig.gain.get(k) or max(fig.gain.values())
    gpu = gpu_seconds(w, fig)
    loaders = sum(n / fig.loader_img_s[path] for path, n in w.loaded.items() if fig.loader_img_s.get(path))
    fixed = (w.epochs * fig.epoch_fixed_s + w.val_passes * fig.val_fixed_s + w.tasks * fig.task_fixed_s
             + fig.run_start_s + w.host_s)  # fmt: skip
    return max(gpu / gain, loaders) + fixed / gain


def stream_sizes(stream: Any) -> list[TaskSize]:
    """Per-task split sizes and classes of a composed stream config, from the datasets' official counts."""
    if stream.name == "synthetic":
        sizes = list(stream.classes_per_task)[: stream.num_tasks]
        out = [
            TaskSize(f"syn{i}", n * stream.train_per_class, n * stream.val_per_class, n * stream.test_per_class, n)
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
            out.append(TaskSize(name, tr, va, te, exp.classes))
    cap_t, cap_e = stream.max_train_per_task, stream.max_eval_per_task
    for s in out:
        if cap_t:
            s.train = min(s.train, cap_t)
        if cap_e:
            s.val, s.test = min(s.val, cap_e), min(s.test, cap_e)
    return out


@dataclass
class Row:
    """One bench entry's counted FLOPs and settings on one backbone."""

    method: str
    epochs: int
    flops: StepFlops
    full: StepFlops
    settings: Any
    features: bool = True
    """``linear`` on cached features (False: the basis's every epoch through the frozen backbone)."""

    def work(self, sizes: list[TaskSize]) -> Work:
        if not self.features and parse_row(self.method).name == "linear":
            return lightning_work(self.method, sizes, self.epochs, self.flops, self.full, self.settings)
        return row_work(self.method, sizes, self.epochs, self.flops, self.full, self.settings)


def bench_row(method: str, backbone: str, epochs: int, overrides: dict[str, Any] | None = None) -> Row:
    """``method``'s counted FLOPs and settings (its card) on ``backbone``: from the packaged table, else counted now
    (a row or backbone the table does not have; said on stderr)."""
    from recast_bench.perf.flops import count_entry

    flops, full = row_flops(backbone, method), row_flops(backbone, "full")
    if flops is None or full is None:
        print(f"cost: counting the FLOPs of {method} on {backbone} now (not in the packaged table: "
              "python -m recast_bench.perf.flops --write adds the bench rows)", file=sys.stderr)  # fmt: skip
        try:
            flops, full = flops or count_entry(method, backbone), full or count_entry("full", backbone)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 (a method that cannot be built here: one line, not a traceback)
            raise UserError(f"cannot count the FLOPs of {method} on {backbone}: {str(e).splitlines()[0]}") from None
    return Row(method, epochs, flops, full, settings_of(method, backbone, overrides))


def default_methods(backbone: str) -> list[str]:
    """The entries ``make bench BACKBONE=backbone`` runs (the protocol cards' bench rows)."""
    from recast_bench.protocol.cards import bench_rows

    return [c.id for c in bench_rows(backbone)]


def card_epochs(method: str, backbone: str, default: int) -> int:
    """Epochs per task of a bench entry as its protocol card sets them (InfLoRA: the paper's 10), else ``default``."""
    from recast_bench.protocol.cards import family_of, find

    row = parse_row(method)
    card = find(row.name, family_of(backbone), [row.variant])
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


def estimate(rows: list[Row], sizes: list[TaskSize], seeds: int, backbone: str, figures: Figures,
             runs_per_gpu: int = 1, drop: tuple[str, ...] = ()) -> Estimate:  # fmt: skip
    """GPU-hours of ``seeds`` runs of every row (``drop``: work parts left out, for the basis)."""
    out = []
    for r in rows:
        w = r.work(sizes).without(drop) if drop else r.work(sizes)
        hours = run_seconds(w, figures, runs_per_gpu) / 3600.0
        gain = figures.gain.get(runs_per_gpu) or max(figures.gain.values())
        linear = parse_row(r.method).name == "linear"
        # linear's features are computed once per backbone; each further seed only starts and trains heads on them
        again = (figures.run_start_s + w.tasks * figures.task_fixed_s) / gain / 3600.0
        total = hours + (seeds - 1) * again if linear else hours * seeds
        gflop = r.flops.train(r.settings.batch)
        out.append({"method": r.method, "epochs": r.epochs, "batch": r.settings.batch, "train_gflop": gflop,
                    "eval_gflop": r.flops.eval_image(r.settings.eval_batch), "hours_per_run": hours, "hours": total,
                    "parts_gflop": {k: v[3] for k, v in w.parts.items()}})  # fmt: skip
    return Estimate(
        backbone=backbone,
        tasks=[s.name for s in sizes],
        train_images_per_epoch=sum(s.train for s in sizes),
        epochs=max((r.epochs for r in rows), default=0),
        seeds=seeds,
        runs=len(rows) * seeds,
        runs_per_gpu=runs_per_gpu,
        gpu_hours=sum(r["hours"] for r in out),
        source=figures.source,
        figures=asdict(figures),
        rows=out,
    )


# ---- what each modelled factor contributes -------------------------------------------------------------------------
def _mfu_alternatives(bb: str, mfu: dict[str, dict[str, float]]) -> list[tuple[str, dict, str]]:
    """``(what, other MFUs, basis)``: the modelled MFU's own choices, each changed alone."""
    m = mfu[bb]
    if bb == "vit":
        alt = {**mfu, "vit": {**m, "compiled": M.VIT_COMPILED_OPTIMISED}}
        return [("ViT-S compiled MFU 22.0 % (the source's hand-optimised model)", alt, M.SOURCES["vit"])]
    ratio = M.resnet_eager(load_table()["references"])["resnet34_over_resnet50"]
    no_ratio = {**mfu, "resnet": {k: v / ratio for k, v in m.items()}}
    no_compile = {**mfu, "resnet": {**m, "compiled": m["eager"]}}
    return [
        (f"ResNet-34 at ResNet-50's MFU (no {ratio:.2f}x from timm's RTX 3090 ratio)", no_ratio, M.SOURCES["resnet"]),
        ("ResNet compile gain 1.0 instead of 1.15 (ours)", no_compile, "compile fuses only BN/ReLU/add around cuDNN"),
    ]


def contributions(rows: list[Row], sizes: list[TaskSize], seeds: int, backbone: str,
                  runs_per_gpu: int) -> list[tuple[str, float, str]]:  # fmt: skip
    """The modelled estimate, then ``(what, GPU-hours with it, basis)`` for each modelled factor changed alone."""
    bb = bb_family(backbone)
    compiled = profile_compiles(bb)
    mfu = M.modelled_mfu(load_table()["references"])
    base = modelled(bb, compiled, mfu)

    def hours(fig: Figures, k: int = runs_per_gpu, drop: tuple[str, ...] = (), rs: list[Row] = rows) -> float:
        return estimate(rs, sizes, seeds, backbone, fig, k, drop).gpu_hours

    def scaled(f: float) -> Figures:
        return replace(base, tflops={k: v / f for k, v in base.tflops.items()},
                       eval_tflops={k: v / f for k, v in base.eval_tflops.items()})  # fmt: skip

    methods = {parse_row(r.method).name for r in rows}
    out = [(f"modelled estimate ({runs_per_gpu} per GPU, compile {'on' if compiled else 'off'})", hours(base), "")]
    out += [(what, hours(modelled(bb, compiled, alt)), why) for what, alt, why in _mfu_alternatives(bb, mfu)]
    out += [
        (f"torch.compile {'off' if compiled else 'on'}", hours(modelled(bb, not compiled, mfu)), M.SOURCES[bb]),
        ("TF32 instead of bf16", hours(scaled(BF16_SPEEDUP)), BASIS["bf16"]),
        ("the float CPU loader for every row", hours(replace(base, loader_img_s=loader_caps(float_for_all=True))),
         BASIS["loader"]),
        ("one run per GPU", hours(base, 1), BASIS["gain"]),
        ("no fixed costs", hours(replace(base, **dict.fromkeys(FIXED, 0.0))), BASIS["fixed"]),
    ]  # fmt: skip
    if "ewc" in methods:
        out.append(("without EWC's penalty host time", hours(base, drop=("ewc penalty",)), BASIS["ewc"]))
    if methods & {"ewc", "lwf", "er-ace", "derpp"}:
        extras = ("ewc importance", "lwf", "er-ace", "derpp")
        out.append(("without the strategies' extra passes", hours(base, drop=extras), BASIS["strategies"]))
    if "linear" in methods:
        uncached = [replace(r, features=False) for r in rows]
        out.append(("no linear feature cache", hours(base, rs=uncached), BASIS["features"]))
    return out


def format_estimate(est: Estimate, stream: str) -> str:
    f = est.figures
    measured = f.get("measured") or []
    src = est.source if measured else "MODELLED figures: no GPU measured them (run `make gpu-check` on the GPU)"
    lines = [
        f"cost: {est.runs} runs of {est.backbone} on {stream} ({len(est.tasks)} tasks, "
        f"{est.train_images_per_epoch:,} train images/epoch, {est.epochs} epochs), {est.runs_per_gpu} per GPU: "
        f"about {est.gpu_hours:.1f} GPU-hours ({src})",
        f"  {'method':<26}{'epochs':>7}{'batch':>6}{'GFLOP/img':>10}{'eval':>7}{'h/run':>8}{'hours':>9}",
    ]
    for r in est.rows:
        lines.append(f"  {r['method']:<26}{r['epochs']:>7}{r['batch']:>6}{r['train_gflop']:>10.2f}"
                     f"{r['eval_gflop']:>7.2f}{r['hours_per_run']:>8.2f}{r['hours']:>9.2f}")  # fmt: skip

    def mark(key: str) -> str:
        return "" if key in measured else "*"

    peak = f.get("peak_tflops")
    rate = ", ".join(
        f"{kind} {f['tflops'][kind]:,.0f}{mark(f'tflops[{kind}]')}"
        + (f" ({100 * f['tflops'][kind] / peak:.1f} %)" if peak else "")
        for kind in ("compiled", "eager")
    )
    fixed = ", ".join(f"{k} {f[k]:,.1f}{mark(k)}" for k in FIXED)
    gain = f["gain"].get(est.runs_per_gpu) or max(f["gain"].values())
    of = f"{peak:,.0f} TFLOP/s" if peak else "unknown"
    lines.append(f"  achieved TFLOP/s (MFU of the {f['card']}'s {of} dense bf16 peak): {rate}; eval "
                 f"{f['eval_tflops']['compiled']:,.0f}{mark('eval_tflops[compiled]')}")  # fmt: skip
    lines.append(f"  {fixed}, gain at {est.runs_per_gpu} per GPU {gain:.2f}{mark(f'gain[{est.runs_per_gpu}]')}  "
                 "(* modelled; FLOPs per image counted: python -m recast_bench.perf.flops)")  # fmt: skip
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
    given = {o.lstrip("+").split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    # An explicit trainer.epochs/batch_size applies to every run, as in make bench; otherwise each row's card decides.
    trainer = {k: int(v) for k, v in given.items() if k in ("trainer.batch_size", "trainer.eval_batch_size")}
    epochs = int(cfg.trainer.epochs)
    rows = [bench_row(m, spec.name, epochs if "trainer.epochs" in given else card_epochs(m, spec.name, epochs),
                      trainer) for m in methods]  # fmt: skip
    k = args.runs_per_gpu or default_runs_per_gpu(spec.name)
    bb = bb_family(spec.name)
    measured, _ = measured_figures(args.throughput)
    fig = measured.get(bb) or modelled(bb, profile_compiles(bb))
    sizes = stream_sizes(cfg.stream)
    est = estimate(rows, sizes, seeds, spec.name, fig, k)
    print(format_estimate(est, args.stream))
    if args.basis:
        print("  basis (modelled, no GPU measured; GPU-hours of these rows with the factor changed alone):")
        for what, hours, why in contributions(rows, sizes, seeds, spec.name, k):
            print(f"    {what:<66}{hours:>7.1f} h" + (f"  [{why}]" if why else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(est), indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cost", help="estimated GPU-hours of a bench (counted FLOPs, throughput, fixed costs, sizes)")
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
