"""The task stream: an ordered list of tasks, each with train/val/test splits and its own label space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    row_ids: dict[str, list[str]] | None = None
    """Per split, each row's file as the split hash names it (:mod:`recast_bench.data.hashes`); ``None``: rows are
    named ``<split>:<row>`` (generated data)."""
    info: dict[str, str] = field(default_factory=dict)
    """What ``data check`` says about the task: ``source`` (where its data comes from), ``val`` (how val was made)."""

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


def limit_indices(n_rows: int, n: int | None, seed: int = 0) -> list[int] | None:
    """Sorted indices of a seeded random subset of at most ``n`` of ``n_rows`` rows; ``None`` keeps them all."""
    if n is None or n >= n_rows:
        return None
    if n <= 0:
        raise UserError(f"sample limit must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_rows, generator=g)[:n].sort().values.tolist()


def limit(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``n`` samples (quick runs); the full dataset when ``n`` is None."""
    idx = limit_indices(len(ds), n, seed)  # type: ignore[arg-type]
    return ds if idx is None else Subset(ds, idx)


def limit_task(t: Task, max_train: int | None, max_eval: int | None, seed: int) -> Task:
    """``t`` with its splits cut to the sample limits (the same rows :func:`limit` keeps), row ids alongside."""
    cuts = {s: limit_indices(len(getattr(t, s)), n, seed) for s, n in (("train", max_train), ("val", max_eval),
                                                                         ("test", max_eval))}  # fmt: skip
    splits = {s: getattr(t, s) if idx is None else Subset(getattr(t, s), idx) for s, idx in cuts.items()}
    ids = t.row_ids
    if ids is not None:
        ids = {s: ids[s] if idx is None else [ids[s][i] for i in idx] for s, idx in cuts.items()}
    return replace(t, **splits, row_ids=ids)


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
    """Build stream ``cfg.name`` (or the stream file ``cfg.file``) at ``image_size`` and apply the subset/order and
    per-task sample limits."""
    if cfg.get("file"):
        from recast_bench.data.streamfile import file_stream

        builder: StreamBuilder = file_stream
    else:
        builder = STREAMS.get(cfg.name)
    tasks = builder(cfg, image_size=image_size, cache_dir=cache_dir)
    tasks = select_tasks(tasks, list(cfg.tasks) if cfg.tasks else None)
    out = []
    for i, t in enumerate(tasks):
        t = limit_task(t, cfg.max_train_per_task, cfg.max_eval_per_task, cfg.seed + i)
        for split, n in t.sizes().items():
            if n == 0:
                held = split == "val" and t.info.get("val", "").startswith("held out")
                hint = f" ({t.info['val']}: give it a val split or more train images)" if held else ""
                raise UserError(f"task {t.name!r} has an empty {split} split{hint}")
        out.append(t)
    if not out:
        raise UserError(f"stream {cfg.name!r} has no tasks")
    return out
