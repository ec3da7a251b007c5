"""Image transforms of the six-dataset stream (paper appendix A.1: resize, center crop, horizontal flip, normalise).

The deterministic part (decode, resize the shorter side to ``256/224 * size``, center crop to ``size``) is
:func:`preprocess`; it is what the cache stores as uint8. The per-sample part (random horizontal flip for training,
float conversion, normalisation) is :func:`sample_transform` and runs on every access, cached or not, so cached and
uncached datasets give identical tensors.
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
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:
        x = v2.functional.pil_to_tensor(image.convert("RGB"))
    return _resize_crop(size)(x).contiguous()


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
    """uint8 ``[3,H,W]`` -> normalised float tensor; a random horizontal flip for training only."""
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
