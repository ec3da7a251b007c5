"""Datasets over one source part (decoded on access, or read from the uint8 cache) and a task split's view.

Both image sources return the same uint8 ``[3, side, side]`` square for the same row
(:func:`recast_bench.data.transforms.to_square`); :class:`SplitView` picks rows from several parts and, on the float
CPU path, applies the per-sample transform. Without a transform it yields the uint8 squares, which the engine
finishes on the device (:mod:`recast_bench.data.device_transforms`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from recast_bench.data.sources import Records
from recast_bench.data.transforms import cache_side, load_square, to_square


def native_side(records: Records) -> int | None:
    """The side of square in-memory images (CIFAR: 32), the largest shorter side of scanned files (user tasks), or
    ``None`` (files of unknown size, non-square arrays)."""
    if records.arrays is not None and records.arrays.shape[1] == records.arrays.shape[2]:
        return int(records.arrays.shape[1])
    return records.side_hint if records.arrays is None else None


def part_side(records: Records, size: int) -> int:
    """The side a part is stored at for a ``size`` px model (:func:`recast_bench.data.transforms.cache_side`)."""
    return cache_side(size, native_side(records))


class DecodedImages(Dataset):
    """Uncached: decode and resize to the stored square on every access.

    Args:
        side: the square's side (:func:`part_side`); ``size``: the model's input side (fixes the crop offset).
    """

    def __init__(self, records: Records, side: int, size: int) -> None:
        self.records, self.side, self.size = records, side, size
        self.labels = records.labels

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> torch.Tensor:
        if self.records.arrays is not None:
            x = torch.from_numpy(np.ascontiguousarray(self.records.arrays[i])).permute(2, 0, 1)
            return to_square(x, self.side, self.size)
        return load_square(self.records.path(i), self.side, self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), int(self.labels[i])


class CachedImages(Dataset):
    """Cached: rows of a ``[N, S, S, 3]`` uint8 ``.npy`` opened with ``mmap_mode="r"`` (random access, no decode).

    The memory map is opened lazily in each process, so DataLoader workers do not pickle the array.
    """

    def __init__(self, path: str, labels: np.ndarray) -> None:
        self.path, self.labels = path, labels
        self._arr: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arr": None}

    @property
    def array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r")
        return self._arr

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i])).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), int(self.labels[i])


class SplitView(Dataset):
    """One task split: rows ``index[:, 1]`` of parts ``index[:, 0]``, with the per-sample ``transform``."""

    def __init__(self, parts: list[Dataset], index: np.ndarray, transform=None) -> None:  # noqa: ANN001
        self.parts, self.index, self.transform = parts, np.asarray(index, dtype=np.int64), transform
        labels = np.zeros(len(self.index), dtype=np.int64)
        for p, part in enumerate(parts):
            rows = self.index[:, 0] == p
            labels[rows] = np.asarray(part.labels)[self.index[rows, 1]]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.index)

    def with_transform(self, transform) -> SplitView:  # noqa: ANN001
        """The same rows with another per-sample transform (``None``: the uint8 squares, for the device path)."""
        return SplitView(self.parts, self.index, transform)

    def raw(self, i: int) -> torch.Tensor:
        """The uint8 image before the per-sample transform."""
        p, r = self.index[i]
        return self.parts[p].image(int(r))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.raw(i)
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i])
