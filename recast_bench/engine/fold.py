"""Adapters own their merge (the shape of PEFT's ``merge`` / ``get_delta_weight``).

A layer that only changes a weight subclasses :class:`Foldable` and says which weight it computes for the current
task state (:meth:`Foldable.merged_weight`); :meth:`Foldable.merged` then gives the plain ``nn.Linear`` /
``nn.Conv2d`` that computes exactly the same. ``deploy/merge.py`` asks each layer and knows no adapter class.
"""

from __future__ import annotations

import torch
from torch import nn


class Foldable:
    """Mixin for an ``nn.Module`` that folds exactly into one plain ``nn.Linear`` or ``nn.Conv2d``.

    Wrappers nest (``recast+lora``: a LoRA layer around a generated-weight layer): a wrapper's merged weight reads its
    inner layer's current weight, so folding the outermost layer folds both.
    """

    def merged_weight(self) -> torch.Tensor:
        """The weight this layer applies under the current task state."""
        raise NotImplementedError

    def fold_base(self) -> nn.Module:
        """The layer whose bias and geometry (stride, padding, ...) the plain layer takes: the wrapped one, if any."""
        return getattr(self, "base", self)  # type: ignore[return-value]

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A plain layer equal to this one for the current task state (same device and dtype)."""
        return plain_layer(self.fold_base(), self.merged_weight().detach())


def plain_layer(base: nn.Module, weight: torch.Tensor) -> nn.Module:
    """``nn.Conv2d`` (a 4-d ``weight``, ``base``'s geometry) or ``nn.Linear`` with ``weight`` and ``base``'s bias."""
    bias = base.bias
    if weight.dim() == 4:
        layer: nn.Module = nn.Conv2d(
            int(base.in_channels), int(base.out_channels), tuple(base.kernel_size), stride=base.stride,
            padding=base.padding, dilation=base.dilation, groups=base.groups, bias=bias is not None,
        )  # fmt: skip
    else:
        layer = nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.to(weight.device, weight.dtype)
