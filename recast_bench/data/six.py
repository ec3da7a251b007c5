"""The paper's six-dataset task stream (section 4, appendix A.1): Flowers102, FGVC-Aircraft, MIT Indoor 67,
CIFAR-100, CIFAR-10, CUB-200-2011, in that order, at the backbone's image size.

Streams registered here: ``six`` (paper order), ``six_reversed`` and ``six_permuted`` (an order drawn from
``stream.seed``) for the task-order analysis of appendix A.2. ``stream.tasks`` selects a subset (only those
datasets are read), ``max_*_per_task`` limit samples (applied by :func:`build_stream`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from recast_bench.data.cache import cached_images, cached_json
from recast_bench.data.device_transforms import BatchTransform, CpuTransform
from recast_bench.data.images import DecodedImages, SplitView, part_side
from recast_bench.data.sources import PAPER_ORDER, Records, SourceData, load_source
from recast_bench.data.splits import dataset_seed, plan_splits
from recast_bench.data.stream import Task
from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, channel_stats
from recast_bench.errors import UserError
from recast_bench.registry import STREAMS


def _stats(
    view: SplitView, geometry: BatchTransform, dataset: str, size: int, cache_dir: str | None, batch: int = 256
) -> tuple[list, list]:
    """Per-channel mean/std of the train split's model inputs at ``size`` before normalisation (cached as JSON;
    key: dataset, size, train rows)."""

    def compute() -> dict:
        def batches():  # noqa: ANN202
            for s in range(0, len(view), batch):
                yield geometry.geometry(torch.stack([view.raw(i) for i in range(s, min(s + batch, len(view)))]))

        mean, std = channel_stats(batches())
        return {"mean": list(mean), "std": list(std)}

    if cache_dir is None:
        out = compute()
    else:
        key = hashlib.sha256(view.index.tobytes() + view.labels.tobytes()).hexdigest()[:16]
        out = cached_json(Path(cache_dir) / "stats" / f"{dataset}-train-{size}px-v2-{key}.json", compute)
    return out["mean"], out["std"]


def build_task(name: str, cfg, image_size: int, cache_dir: str | None) -> Task:  # noqa: ANN001 (stream cfg)
    """One task of a built-in dataset: read it under ``cfg.root``, split it, and wrap each split with its transform."""
    return source_task(load_source(name, cfg.root), cfg, image_size, cache_dir)


def _row_ids(records: list[Records], part_names: list[str], index) -> list[str]:  # noqa: ANN001 (ndarray [N, 2])
    """The split hash's file of each row: its path as the dataset lists it, or ``<part>:<row>`` for arrays."""
    out = []
    for p, r in index.tolist():
        rec = records[p]
        out.append(rec.files[r] if rec.files is not None else f"{part_names[p]}:{r}")
    return out


def source_task(
    src: SourceData, cfg, image_size: int, cache_dir: str | None, name: str | None = None, source: str = ""
) -> Task:  # noqa: ANN001 (stream cfg)
    """A task over ``src``'s splits (``cfg.split``, val held out of train when ``src`` has none).

    Args:
        name: the task's name (default: the dataset's); the cache and the split seed stay keyed by ``src.name``.
        source: where the data comes from, for ``data check``.
    """
    part_names, index = plan_splits(src, cfg.split, cfg.val_fraction, list(cfg.pooled_fractions), cfg.seed)
    use_cache = bool(cfg.cache) and cache_dir is not None
    records = [src.pool if p == "pool" else src.splits[p] for p in part_names]
    side = min(part_side(rec, image_size) for rec in records)  # one side per task, so batches stack
    parts = [
        cached_images(rec, src.name, p, side, image_size, cache_dir)
        if use_cache
        else DecodedImages(rec, side, image_size)
        for p, rec in zip(part_names, records)
    ]
    if cfg.normalization == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.normalization == "dataset":
        geometry = BatchTransform(image_size, side, (0.0,) * 3, (1.0,) * 3)
        stats_dir = cache_dir if use_cache else None
        mean, std = _stats(SplitView(parts, index["train"]), geometry, src.name, image_size, stats_dir)
    else:
        raise UserError(f"stream.normalization must be 'imagenet' or 'dataset', got {cfg.normalization!r}")
    bt = BatchTransform(image_size, side, tuple(mean), tuple(std))
    train_tf, eval_tf = CpuTransform(bt, train=True), CpuTransform(bt, train=False)
    if cfg.split == "pooled":
        val_from = f"pooled and re-split {'/'.join(f'{f:g}' for f in cfg.pooled_fractions)}"
    else:
        val_from = "official val split" if "val" in src.splits else f"held out of train ({cfg.val_fraction:.0%})"
    return Task(
        name=name or src.name,
        num_classes=src.num_classes,
        train=SplitView(parts, index["train"], train_tf),
        val=SplitView(parts, index["val"], eval_tf),
        test=SplitView(parts, index["test"], eval_tf),
        batch_transform=bt,
        class_names=src.class_names,
        row_ids={s: _row_ids(records, part_names, index[s]) for s in ("train", "val", "test")},
        info={"source": source or f"built-in dataset {src.name}", "val": val_from, "stored_side": str(side)},
    )


def _build(order: list[str], cfg, image_size: int, cache_dir: str | None) -> list[Task]:  # noqa: ANN001
    wanted = list(cfg.tasks) if cfg.tasks else order
    unknown = [n for n in wanted if n not in order]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r} in stream.tasks; valid: {', '.join(order)}")
    # Only the selected datasets are read, so a subset stream works with the others absent.
    return [build_task(n, cfg, image_size, cache_dir) for n in order if n in wanted]


@STREAMS.register("six")
def six_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001
    """Paper order: flowers102, aircraft, mit67, cifar100, cifar10, cub200."""
    return _build(list(PAPER_ORDER), cfg, image_size, cache_dir)


@STREAMS.register("six_reversed")
def six_reversed_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001
    """Reverse paper order (task-order analysis, appendix A.2)."""
    return _build(list(reversed(PAPER_ORDER)), cfg, image_size, cache_dir)


def permuted_order(seed: int) -> list[str]:
    """The paper's tasks in an order drawn from ``seed`` (a given seed always gives the same order)."""
    rng = np.random.default_rng(dataset_seed(seed, "six_permuted"))
    return [PAPER_ORDER[i] for i in rng.permutation(len(PAPER_ORDER))]


@STREAMS.register("six_permuted")
def six_permuted_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001
    """A seeded permutation of the paper order (``stream.seed``; task-order analysis, appendix A.2)."""
    return _build(permuted_order(cfg.seed), cfg, image_size, cache_dir)
