"""The work of one bench run before its fixed costs: FLOPs by kind of step, images through each loader path, and
host-bound seconds, from the counted per-row FLOPs (:mod:`recast_bench.perf.flops`) and each row's own settings.

Per task ``t`` with ``train_t`` training images and ``E`` epochs, a Lightning row trains ``E x train_t`` images at
its counted step (compiled in the GPU profile) and validates every epoch. Its data-driven hooks run eager on the CPU
loader's float images: InfLoRA's covariance pass over the task's training set before and after it (forward only,
``max_batches`` capped); RoSA's warm-up (``warmup_steps`` plus ``grad_batches`` steps, charged at the row's step).

The Avalanche rows run eager, validate once per task, and add what their strategies do (avalanche-lib 0.6 sources,
with the row's settings from its protocol card):

* **EWC** (``training/plugins/ewc.py``): after every experience, the importance pass: forward and backward over the
  experience's training set at ``train_mb_size``; from the second experience on, the penalty of every earlier
  experience on every parameter, computed over flat tensors (``baselines/avalanche_ewc.py``, in place of avalanche's
  per-tensor loop): :data:`EWC_STEP_OPS` aten ops per step (the parameters concatenated, and their gradients split
  back) plus :data:`EWC_EXP_OPS` per earlier experience, host-bound: the GPU waits for the launches.
* **LwF** (``training/regularization.py``, multi-task): from the second experience on, the teacher's forward on the
  batch (no grad) and a second forward of the current network over every head *with* gradients, whose backward runs
  too: two training passes and a forward per image.
* **GDumb** (``training/plugins/gdumb.py``): every experience retrains from the initial network on the class-balanced
  memory only (``mem_size`` over the classes seen, each class keeping at most its own images), not on the stream.
* **ER-ACE** (``training/supervised/er_ace.py``): from the second experience on, a replay batch of
  ``batch_size_mem`` forward and backward beside every stream batch.
* **DER++** (``training/supervised/der.py``): from the second experience on, a replay batch of ``batch_size_mem``
  concatenated to every stream batch; after every experience, a forward over the experience's whole training set for
  the buffer's logits.
* **L2P**: counted on avalanche's prompted ViT with its frozen query forward.

``linear`` computes its frozen features once per backbone (both flips of train, val and test), shared by its seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recast_bench.perf.flops import StepFlops
from recast_bench.protocol.rows import parse_row

EWC_STEP_OPS = 437
"""aten ops of the flat EWC penalty per training step once any experience is done, whatever their number (108 views
and a cat forward, 108 slices, views and gradient detaches backward), counted with a dispatch mode on
``FlatEWCPlugin.before_backward`` and its backward on ResNet-34's 108 parameter tensors (tests/test_avalanche_ewc.py
recounts them). Most only touch metadata; all are charged as launches, so the figure errs high."""
EWC_EXP_OPS = 11
"""aten ops of the flat EWC penalty per earlier experience per step (avalanche's own loop took 1,183 more: 11 per
parameter tensor; 1,194 per experience in all on ResNet-34)."""
HOST_US_PER_OP = 5.0
"""Host microseconds per eager op (Python dispatch and CUDA launch) where the GPU work of each op is smaller (the
penalty's largest tensor, 2.4 M floats, streams in 3 us at 3.35 TB/s). Ours, not measured: eager PyTorch issues a
few microseconds of host work per op."""
AVALANCHE = ("ewc", "lwf", "gdumb", "er-ace", "derpp", "l2p")
FLOAT_LOADER = ("gdumb", "er-ace", "derpp")
"""Avalanche strategies training on the float CPU path (their batches mix tasks, baselines/avalanche_device.py)."""


@dataclass
class TaskSize:
    name: str
    train: int
    val: int
    test: int
    classes: int = 0


@dataclass
class Settings:
    """A row's settings that change its work (from its protocol card, else the method's defaults)."""

    batch: int = 64
    eval_batch: int = 256
    mem_size: int = 4400
    batch_size_mem: int | None = None
    warmup_steps: int = 0
    grad_batches: int = 0
    max_batches: int | None = None


@dataclass
class Work:
    """One run's work before fixed costs (GFLOP; images; seconds)."""

    train: dict[str, float] = field(default_factory=lambda: {"compiled": 0.0, "eager": 0.0})
    """Training and hook GFLOP by the MFU they run at."""
    eval: dict[str, float] = field(default_factory=lambda: {"compiled": 0.0, "eager": 0.0})
    loaded: dict[str, float] = field(default_factory=lambda: {"uint8": 0.0, "float": 0.0})
    host_s: float = 0.0
    """Seconds the host works while the GPU waits (EWC's penalty loop)."""
    parts: dict[str, tuple[str, str, float, float]] = field(default_factory=dict)
    """What -> (MFU kind, loader path, images, GFLOP), for the basis (the plain training passes are ``train``)."""
    epochs: int = 0
    """Epochs in the run (each has the per-epoch fixed cost)."""
    val_passes: int = 0
    tasks: int = 0

    def add(self, what: str, images: float, gflop: float, kind: str, loader: str = "uint8") -> None:
        """``images`` more images of ``gflop`` each, at the ``kind`` MFU, through the ``loader`` path."""
        self.train[kind] += images * gflop
        self.loaded[loader] += images
        _, _, n, f = self.parts.get(what, (kind, loader, 0.0, 0.0))
        self.parts[what] = (kind, loader, n + images, f + images * gflop)

    def without(self, prefixes: tuple[str, ...]) -> Work:
        """This work less its parts whose name starts with one of ``prefixes`` (and less EWC's host time when
        ``"ewc penalty"`` is one of them)."""
        w = Work(dict(self.train), dict(self.eval), dict(self.loaded), self.host_s, {}, self.epochs, self.val_passes,
                 self.tasks)  # fmt: skip
        for what, (kind, loader, n, f) in self.parts.items():
            if what.startswith(prefixes):
                w.train[kind] -= f
                w.loaded[loader] -= n
            else:
                w.parts[what] = (kind, loader, n, f)
        if any("ewc penalty".startswith(p) for p in prefixes):
            w.host_s = 0.0
        return w


def seen_test(sizes: list[TaskSize]) -> list[int]:
    """Test images evaluated after each task (every task seen so far is re-tested)."""
    return [sum(s.test for s in sizes[: t + 1]) for t in range(len(sizes))]


def gdumb_memory(sizes: list[TaskSize], mem_size: int) -> list[int]:
    """Images in GDumb's class-balanced memory while training task t: ``mem_size // classes seen`` per class (the
    remainder to the first classes), each class keeping at most its own images (taken as the task's mean)."""
    out = []
    for t in range(len(sizes)):
        seen = sizes[: t + 1]
        classes = sum(max(1, s.classes) for s in seen)
        quota = mem_size / classes
        out.append(int(sum(max(1, s.classes) * min(s.train / max(1, s.classes), quota) for s in seen)))
    return out


def linear_work(sizes: list[TaskSize], full: StepFlops, s: Settings) -> Work:
    w = Work(tasks=len(sizes))
    images = sum(2 * z.train + z.val + z.test for z in sizes)
    w.eval["eager"] += images * full.eval_image(s.eval_batch)
    w.loaded["uint8"] += images
    return w


def lightning_work(method: str, sizes: list[TaskSize], epochs: int, row: StepFlops, full: StepFlops,
                   s: Settings) -> Work:  # fmt: skip
    w = Work(epochs=epochs * len(sizes), val_passes=epochs * len(sizes), tasks=len(sizes))
    step, ev = row.train(s.batch), row.eval_image(s.eval_batch)
    parts = parse_row(method).parts
    for z, tested in zip(sizes, seen_test(sizes), strict=True):
        w.add("train", epochs * z.train, step, "compiled")
        w.eval["compiled"] += (epochs * z.val + tested) * ev
        w.loaded["uint8"] += epochs * z.val + tested
        if "inflora" in parts:  # the covariance pass before and after the task, forward only, eager
            n = z.train if s.max_batches is None else min(z.train, s.max_batches * s.batch)
            w.add("inflora covariance passes", 2 * n, full.eval_image(s.batch), "eager", "float")
        if "rosa" in parts and s.warmup_steps + s.grad_batches:
            w.add("rosa warm-up", (s.warmup_steps + s.grad_batches) * s.batch, step, "eager", "float")
    return w


def avalanche_work(method: str, sizes: list[TaskSize], epochs: int, row: StepFlops, full: StepFlops,
                   s: Settings) -> Work:  # fmt: skip
    w = Work(epochs=epochs * len(sizes), val_passes=len(sizes), tasks=len(sizes))
    loader = "float" if method in FLOAT_LOADER else "uint8"
    step, fwd, ev = row.train(s.batch), full.eval_image(s.batch), row.eval_image(s.eval_batch)
    memory = gdumb_memory(sizes, s.mem_size) if method == "gdumb" else []
    mem_batch = s.batch_size_mem or s.batch
    for t, (z, tested) in enumerate(zip(sizes, seen_test(sizes), strict=True)):
        w.add("train", epochs * (memory[t] if memory else z.train), step, "eager", loader)
        w.eval["eager"] += (z.val + tested) * ev
        w.loaded["uint8"] += z.val + tested
        later = t > 0
        if method == "ewc":
            w.add("ewc importance pass", z.train, step, "eager")
            steps = epochs * -(-z.train // s.batch)
            w.host_s += steps * (EWC_STEP_OPS + t * EWC_EXP_OPS) * HOST_US_PER_OP * 1e-6 if later else 0.0
        elif method == "lwf" and later:
            w.add("lwf second pass and teacher", epochs * z.train, step + fwd, "eager")
        elif method in ("er-ace", "derpp") and later:
            w.add(f"{method} replay batches", epochs * z.train * mem_batch / s.batch, step, "eager", loader)
        if method == "derpp":
            w.add("derpp buffer logits", z.train, fwd, "eager", loader)
    return w


def row_work(method: str, sizes: list[TaskSize], epochs: int, row: StepFlops, full: StepFlops, s: Settings) -> Work:
    """The work of one run of bench entry ``method`` (``NAME`` or ``NAME@VARIANT``); ``row`` is its counted step,
    ``full`` the backbone's every-weight step."""
    base = parse_row(method).name
    if base == "linear":
        return linear_work(sizes, full, s)
    if base in AVALANCHE:
        return avalanche_work(base, sizes, epochs, row, full, s)
    return lightning_work(method, sizes, epochs, row, full, s)


def settings_of(method: str, backbone: str, overrides: dict[str, Any] | None = None) -> Settings:
    """The :class:`Settings` of bench entry ``method`` on ``backbone``: the protocol card's values, else the
    method's config defaults (``overrides``: ``trainer.batch_size`` and the like given on the command line)."""
    from recast_bench.config import TrainerConfig
    from recast_bench.protocol.cards import family_of, find
    from recast_bench.registry import METHODS, load_all

    row = parse_row(method)
    card = find(row.name, family_of(backbone), [row.variant])
    values = {k: v.value for k, v in (card.values if card else {}).items()} | (overrides or {})
    load_all()
    defaults = TrainerConfig()
    out = Settings(batch=int(values.get("trainer.batch_size", defaults.batch_size)),
                   eval_batch=int(values.get("trainer.eval_batch_size", defaults.eval_batch_size)))  # fmt: skip
    for part in row.parts:
        if part not in METHODS:
            continue
        cfg = METHODS.get(part).Config()
        for key in ("mem_size", "batch_size_mem", "warmup_steps", "grad_batches", "max_batches"):
            if hasattr(cfg, key):
                setattr(out, key, values.get(f"method.{part}.{key}", getattr(cfg, key)))
    return out
