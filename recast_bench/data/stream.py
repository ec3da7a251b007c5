"""The task stream: an ordered list of tasks, each with train/val/test splits and its own label space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset, Subset

from recast_bench.errors import UserError
from recast_bench.registry import STREAMS

if TYPE_CHECKING:
    from recast_bench.data.device_transforms import BatchTransform

SPLITS = ("train", "val", "test")


@dataclass
class Task:
    """One task of the stream. Datasets yield ``(image_tensor[3,H,W], label)`` with labels in ``[0, num_classes)``.

    ``train``/``val``/``test`` yield model-ready float images (the CPU path: Avalanche, data-driven method init).
    When ``batch_transform`` is set, :meth:`uint8` gives the same rows as uint8 squares that the engine finishes on
    its device with ``batch_transform`` (the fast path); when it is ``None`` the datasets are already model-ready
    (synthetic tensors) and :meth:`uint8` returns them unchanged.
    """

    name: str
    num_classes: int
    train: Dataset
    val: Dataset
    test: Dataset
    batch_transform: BatchTransform | None = None
    class_names: list[str] | None = None
    """Human-readable class names in label order, where the dataset has them."""

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]

    def uint8(self, split: str) -> Dataset:
        """Split ``split`` for the device path: uint8 squares when ``batch_transform`` is set."""
        ds = getattr(self, split)
        return ds if self.batch_transform is None else _untransformed(ds)


def _untransformed(ds: Dataset) -> Dataset:
    if isinstance(ds, Subset):
        return Subset(_untransformed(ds.dataset), ds.indices)
    with_transform = getattr(ds, "with_transform", None)
    if with_transform is None:
        raise TypeError(f"{type(ds).__name__} has no uint8 view; set Task.batch_transform=None for it")
    return with_transform(None)


StreamBuilder = Callable[..., list[Task]]


def limit(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``n`` samples (quick runs); the full dataset when ``n`` is None."""
    if n is None or n >= len(ds):  # type: ignore[arg-type]
        return ds
    if n <= 0:
        raise UserError(f"sample limit must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()  # type: ignore[arg-type]
    return Subset(ds, idx)


def select_tasks(tasks: list[Task], names: list[str] | None) -> list[Task]:
    """Keep and reorder tasks by name (subset streams, task-order studies)."""
    if not names:
        return tasks
    by_name = {t.name: t for t in tasks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r} in stream.tasks; valid: {', '.join(by_name)}")
    if len(set(names)) != len(names):
        raise UserError("stream.tasks lists a task twice")
    return [by_name[n] for n in names]


def build_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001 (DictConfig)
    """Build stream ``cfg.name`` at ``image_size`` and apply the subset/order and per-task sample limits."""
    builder: StreamBuilder = STREAMS.get(cfg.name)
    tasks = builder(cfg, image_size=image_size, cache_dir=cache_dir)
    tasks = select_tasks(tasks, list(cfg.tasks) if cfg.tasks else None)
    out = []
    for i, t in enumerate(tasks):
        t = replace(
            t,
            train=limit(t.train, cfg.max_train_per_task, cfg.seed + i),
            val=limit(t.val, cfg.max_eval_per_task, cfg.seed + i),
            test=limit(t.test, cfg.max_eval_per_task, cfg.seed + i),
        )
        for split, n in t.sizes().items():
            if n == 0:
                raise UserError(f"task {t.name!r} has an empty {split} split")
        out.append(t)
    if not out:
        raise UserError(f"stream {cfg.name!r} has no tasks")
    return out
