"""Train/val/test splits of one dataset: ``official`` (the dataset's own split, val held out of train) or
``pooled`` (all images pooled and re-split, as the paper's appendix A.1 describes).

The paper says "75%-15%-15%" train/val/test, which sums to 105 %; ``pooled_fractions`` makes the choice explicit
(default 70/15/15). Both options are seeded and stratified by class, so a run is reproducible from ``stream.seed``.
Model selection uses ``val``; ``test`` is never seen before evaluation.
"""

from __future__ import annotations

import zlib

import numpy as np

from recast_bench.data.sources import SourceData
from recast_bench.errors import UserError


def dataset_seed(seed: int, name: str) -> int:
    """Per-dataset seed, so two datasets with equal class structure do not share a permutation."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def stratified_partition(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split indices ``0..N-1`` into ``len(fractions)`` sorted parts, stratified by label, with exact total sizes.

    Each class is shuffled and its samples get evenly spaced ranks ``(j + 0.5) / n_c`` in [0, 1]; sorting all
    samples by rank and cutting at the cumulative fractions gives every class (almost exactly) its share of every
    part even for classes of a few images, and part sizes of exactly ``round(fraction * N)``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    rank = np.empty(n)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = rng.permutation(idx)
        rank[perm] = (np.arange(len(idx)) + 0.5) / len(idx)
    order = np.lexsort((rng.random(n), rank))  # random tie-break between classes of equal rank
    cuts = np.round(np.cumsum([0.0, *fractions]) * n).astype(int)
    cuts[-1] = n
    return [np.sort(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def check_fractions(split: str, val_fraction: float, pooled_fractions: list[float]) -> None:
    if split not in ("official", "pooled"):
        raise UserError(f"stream.split must be 'official' or 'pooled', got {split!r}")
    if not 0 < val_fraction < 1:
        raise UserError(f"stream.val_fraction must be in (0, 1), got {val_fraction}")
    fr = list(pooled_fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise UserError(f"stream.pooled_fractions must be 3 positive train/val/test fractions summing to 1, got {fr}")


def plan_splits(
    src: SourceData, split: str, val_fraction: float, pooled_fractions: list[float], seed: int
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Which source parts a task uses and, per split, an ``[N, 2]`` array of ``(part, row)`` pairs.

    Returns:
        ``(parts, index)``: ``parts`` names the :class:`SourceData` records used (keys of ``src.splits`` or
        ``"pool"``); ``index[s][:, 0]`` indexes ``parts`` and ``index[s][:, 1]`` the row in that part.
    """
    check_fractions(split, val_fraction, pooled_fractions)
    seed = dataset_seed(seed, src.name)

    def pairs(part: int, rows: np.ndarray) -> np.ndarray:
        return np.stack([np.full(len(rows), part), rows], axis=1).astype(np.int64)

    if split == "official":
        parts = list(src.splits)
        p = {name: i for i, name in enumerate(parts)}
        tr = src.splits["train"]
        if "val" in src.splits:  # Flowers102 and FGVC-Aircraft ship a val split: use it
            train, val = pairs(p["train"], np.arange(len(tr))), pairs(p["val"], np.arange(len(src.splits["val"])))
        else:
            keep, held = stratified_partition(tr.labels, [1 - val_fraction, val_fraction], seed)
            train, val = pairs(p["train"], keep), pairs(p["train"], held)
        return parts, {"train": train, "val": val, "test": pairs(p["test"], np.arange(len(src.splits["test"])))}
    if src.pool is not None:  # MIT67: the lists cover 6,700 of the 15,620 images; pooled uses them all
        parts, labels = ["pool"], src.pool.labels
        all_pairs = pairs(0, np.arange(len(labels)))
    else:
        parts = list(src.splits)
        all_pairs = np.concatenate([pairs(i, np.arange(len(src.splits[s]))) for i, s in enumerate(parts)])
        labels = np.concatenate([src.splits[s].labels for s in parts])
    tr, va, te = stratified_partition(labels, list(pooled_fractions), seed)
    return parts, {"train": all_pairs[tr], "val": all_pairs[va], "test": all_pairs[te]}
