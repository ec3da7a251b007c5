"""Image transforms of the six-dataset stream (paper appendix A.1: resize, center crop, horizontal flip, normalise).

The reference pipeline, torchvision's ops on one image, is :func:`preprocess` (decode, resize the shorter side to
``256/224 * size``, center crop to ``size``) followed by :func:`sample_transform` (random horizontal flip for
training, float conversion, normalisation).

What the cache stores is :func:`to_square`: the image resized once to a square of side :func:`cache_side` (the
resize target for photos, the native 32 px for CIFAR). The rest (resize when the sides differ, center crop, flip,
normalise) runs per batch on the training device (:mod:`recast_bench.data.device_transforms`). The square's crop
offset is chosen so that cropping it again on the device gives exactly the reference crop.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(size: int) -> int:
    """Shorter side before the center crop: the usual 256 -> 224 ratio, scaled to ``size``."""
    return int(round(size * 256 / 224))


def _resize_crop(size: int) -> v2.Compose:
    return v2.Compose([v2.Resize(resize_size(size), antialias=True), v2.CenterCrop(size)])


def preprocess(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """Resize and center-crop one image to a uint8 tensor ``[3, size, size]``.

    Args:
        image: a decoded PIL image (any mode) or an ``[H, W, 3]`` uint8 array (CIFAR).
        size: output side length.
    """
    return _resize_crop(size)(_as_tensor(image)).contiguous()


def cache_side(size: int, native: int | None = None) -> int:
    """Side of the stored uint8 squares for a ``size`` px model: the resize target, or ``native`` when smaller.

    Args:
        native: the side of square in-memory images (CIFAR: 32); ``None`` for photo files of unknown size.
    """
    target = resize_size(size)
    return target if native is None else min(native, target)


def to_square(x: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> ``[3, side, side]``: shorter side resized to ``side``, then a ``side`` square cut out.

    When ``side`` is the resize target of a ``size`` px model, the square's offset is the reference crop's offset
    minus the device crop's, so the device's center crop of the square equals :func:`preprocess` pixel for pixel.
    """
    x = v2.functional.resize(x, [side], antialias=True)
    h, w = x.shape[-2:]
    if (h, w) == (side, side):
        return x.contiguous()

    def offset(full: int) -> int:
        if side == resize_size(size) and side >= size:
            inner = int(round((side - size) / 2.0))
            return min(max(int(round((full - size) / 2.0)) - inner, 0), full - side)
        return int(round((full - side) / 2.0))

    top, left = offset(h), offset(w)
    return x[:, top : top + side, left : left + side].contiguous()


def _as_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return v2.functional.pil_to_tensor(image.convert("RGB"))


def load_square(path: str, side: int, size: int) -> torch.Tensor:
    """Decode an image file and :func:`to_square` it (JPEG draft decoding as in :func:`load_image`)."""
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        return to_square(_as_tensor(im), side, size)


def load_image(path: str, size: int) -> torch.Tensor:
    """Decode a JPEG (or any PIL-readable file) and :func:`preprocess` it.

    ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the file is much larger than needed; the result is
    never smaller than the resize target, so quality is unchanged and large photos decode several times faster.
    """
    with Image.open(path) as im:
        target = resize_size(size)
        im.draft("RGB", (target, target))
        return preprocess(im, size)


def sample_transform(train: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """The reference per-sample transform: uint8 ``[3,H,W]`` -> normalised float; a random flip for training only."""
    ops: list = [v2.RandomHorizontalFlip()] if train else []
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def channel_stats(batches) -> tuple[tuple[float, ...], tuple[float, ...]]:  # noqa: ANN001 (iterable of uint8 tensors)
    """Per-channel mean and std in [0, 1] over an iterable of uint8 ``[B, 3, H, W]`` batches (float64 sums)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for b in batches:
        x = b.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("no images to compute statistics on")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
