"""The per-batch half of the input pipeline: uint8 squares in, normalised model inputs out, on any device.

The cache stores each image as a uint8 square of side ``source`` (:func:`recast_bench.data.transforms.cache_side`):
CIFAR at its native 32 px, photos resized to the shorter side the paper's pipeline resizes to (256 for a 224 px
model). :class:`BatchTransform` finishes a batch where it lands, normally on the GPU: resize to ``resize_size(size)``
when the stored side differs (CIFAR), center crop to ``size``, random horizontal flip (training), and ImageNet or
dataset normalisation. This moves a quarter of the bytes over PCIe and no float work to the loader workers.

The resize result is rounded to whole uint8 levels, as torchvision's resize of a uint8 image (the CPU reference
pipeline) is, so the two paths agree to within one uint8 level before normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from recast_bench.data.transforms import resize_size


@dataclass(frozen=True)
class BatchTransform:
    """Resize + center crop + flip + normalise of uint8 ``[B, 3, source, source]`` batches (any device).

    Attributes:
        size: the model's input side.
        source: the side of the stored uint8 squares.
        mean, std: per-channel normalisation in [0, 1] units.
        train_flip: whether training batches are randomly flipped (the paper's only augmentation).
    """

    size: int
    source: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_flip: bool = True

    def key(self) -> str:
        """Identifies the transform's output (feature-cache keys)."""
        m = ",".join(f"{v:.6g}" for v in self.mean)
        s = ",".join(f"{v:.6g}" for v in self.std)
        return f"bt1|{self.size}|{self.source}|{m}|{s}"

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, source, source]`` -> float ``[B, 3, size, size]`` in [0, 255] (resize and crop only)."""
        x = x.float()
        target = resize_size(self.size)
        if self.source != target:
            x = F.interpolate(x, size=(target, target), mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)  # whole levels, as the uint8 reference resize produces
        side = x.shape[-1]
        if side != self.size:
            top = int(round((side - self.size) / 2.0))  # torchvision's center_crop offset
            x = x[..., top : top + self.size, top : top + self.size]
        return x

    def draw_flips(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A bool ``[n]`` mask, drawn on the CPU so the draws do not depend on the device."""
        return torch.rand(n, generator=generator) < 0.5

    def __call__(self, x: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Finish a uint8 batch; ``flip`` (bool ``[B]``, any device) flips those samples horizontally."""
        x = self.geometry(x)
        if flip is not None:
            flip = flip.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        mean, std = _channels(self.mean, x.device, x.dtype), _channels(self.std, x.device, x.dtype)
        return (x / 255.0 - mean) / std


@lru_cache(maxsize=32)
def _channels(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a ``[1, C, 1, 1]`` tensor on ``device``, built once: ``torch.tensor(..., device=cuda)`` per batch
    would be a blocking host-to-device copy, i.e. a sync with the GPU's queue on every step."""
    with torch.inference_mode(False):  # a plain tensor even when first built under inference mode (evaluation)
        return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


class CpuTransform:
    """The float CPU path of one sample (Avalanche strategies, data-driven method init): the same maths as
    :class:`BatchTransform` on a batch of one, with the flip drawn from the process's torch RNG (seeded per worker)."""

    def __init__(self, tf: BatchTransform, train: bool) -> None:
        self.tf, self.train = tf, train

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flip = self.tf.draw_flips(1) if self.train and self.tf.train_flip else None
        return self.tf(x.unsqueeze(0), flip)[0]


class DeviceAugment:
    """Finishes the batches of one fit on the device, with its own seeded flip generator.

    The flips come from a CPU generator seeded by the run seed and task, in batch order, so a resumed run (which
    restarts the task) and a frozen-feature run (:mod:`recast_bench.engine.features`) draw the same flips.
    """

    def __init__(self, tf: BatchTransform, seed: int) -> None:
        self.tf = tf
        self.generator = torch.Generator().manual_seed(seed)

    def flips(self, n: int, train: bool) -> torch.Tensor | None:
        return self.tf.draw_flips(n, self.generator) if train and self.tf.train_flip else None

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        return self.tf(x, self.flips(len(x), train))


def flip_seed(seed: int, task_index: int) -> int:
    """Seed of task ``task_index``'s flip generator (distinct from the loader's shuffle seed ``seed + t``)."""
    return (1_000_003 * (seed + task_index) + 7919) % 2**63
