"""A deterministic, offline synthetic stream (and a pretraining set) that needs no files.

Each class is a random low-frequency colour pattern; samples add a random shift, flip, contrast change and pixel
noise, so classes are learnable but not trivially separable. Tasks differ in class count and seed, and the
pretraining set uses disjoint seeds so the stream starts from a backbone that has never seen its classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from recast_bench.data.stream import Task
from recast_bench.errors import UserError
from recast_bench.registry import STREAMS

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _prototypes(num_classes: int, size: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def make_split(protos: torch.Tensor, per_class: int, noise: float, g: torch.Generator) -> TensorDataset:
    """``per_class`` normalised images per prototype with labels, as tensors (fast, deterministic)."""
    c, _, s, _ = protos.shape
    labels = torch.arange(c).repeat_interleave(per_class)
    x = protos[labels].clone()
    shifts = torch.randint(-s // 8, s // 8 + 1, (len(labels), 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        x[i] = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
    flip = torch.rand(len(labels), generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    contrast = 0.7 + 0.6 * torch.rand(len(labels), 1, 1, 1, generator=g)
    x = ((x - 0.5) * contrast + 0.5 + noise * 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return TensorDataset((x - MEAN) / STD, labels)


def synthetic_task(name: str, num_classes: int, size: int, seed: int, cfg) -> Task:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    protos = _prototypes(num_classes, size, g)
    return Task(
        name=name,
        num_classes=num_classes,
        train=make_split(protos, cfg.train_per_class, cfg.noise, g),
        val=make_split(protos, cfg.val_per_class, cfg.noise, g),
        test=make_split(protos, cfg.test_per_class, cfg.noise, g),
        class_names=[f"{name}-class{c}" for c in range(num_classes)],
    )


@STREAMS.register("synthetic")
def synthetic_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001
    counts = list(cfg.classes_per_task)
    if cfg.num_tasks < 1 or len(counts) < cfg.num_tasks:
        raise UserError(f"synthetic stream needs stream.classes_per_task with >= num_tasks={cfg.num_tasks} entries")
    if any(c < 2 for c in counts):
        raise UserError("synthetic stream needs at least 2 classes per task")
    return [synthetic_task(f"syn{i}", counts[i], image_size, 1000 * cfg.seed + i, cfg) for i in range(cfg.num_tasks)]


def pretraining_set(
    num_classes: int, size: int, per_class: int, seed: int = 12345, noise: float = 0.6
) -> TensorDataset:
    """The demo's separate pretraining data: its own classes and seeds, disjoint from the stream."""
    g = torch.Generator().manual_seed(seed)
    return make_split(_prototypes(num_classes, size, g), per_class, noise, g)
