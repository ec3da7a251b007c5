"""Fold a task's adapters into plain layers, where the fold is exact.

Every adapter that only changes a layer's weight is replaced by a plain ``nn.Linear`` / ``nn.Conv2d`` holding the
weight it computes for the current task state:

* RECAST's generated-weight layers (``ReparamLinear``, ``ReparamConv2d``): ``W = mean_k sum_i C[k, i] T[i]``;
* the ViT row adapters (LoRA, MeLo, DoRA, RoSA, InfLoRA: ``RowAdaptedLinear``): their ``effective_weight()``;
* Piggyback: ``W * 1[mask > threshold]``.

Wrappers nest (``recast+lora`` is a LoRA layer around a generated-weight layer): the effective weight reads the
inner layer's current weight, so one replacement folds both. Modules that do more than change a weight (AdaptFormer's
parallel adapter, CLR's reprogramming conv, HAT's gates) stay; :func:`leftover` names them so the export can choose
a torch.export program instead. Dispatch is on the adapters' classes, imported lazily from their owners' modules.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

HELPER_ATTRS = ("recast_banks", "lora_shared")
"""Containers that only hold what merged layers already folded in (RECAST templates, shared LoRA factors)."""


def _foldable_types() -> tuple[type, ...]:
    from recast_bench.recast.layers import REPARAM_TYPES

    types: list[type] = list(REPARAM_TYPES)
    try:
        from baselines._vit import RowAdaptedLinear
        from baselines.piggyback import PiggybackLayer

        types += [RowAdaptedLinear, PiggybackLayer]
    except ImportError:  # baselines not installed: only RECAST layers exist
        pass
    return tuple(types)


def _effective_weight(m: nn.Module) -> torch.Tensor:
    from recast_bench.recast.layers import REPARAM_TYPES

    if isinstance(m, REPARAM_TYPES):
        return m.bank.generate(m.coefficients)
    if hasattr(m, "effective_weight"):  # RowAdaptedLinear
        return m.effective_weight()
    # PiggybackLayer: the base weight masked by the task's binary mask (the mask is exactly 0/1)
    return m.base.weight * m.binary_mask().to(m.base.weight.dtype)


def _plain(m: nn.Module, weight: torch.Tensor) -> nn.Module:
    base = getattr(m, "base", m)
    bias = base.bias
    if weight.dim() == 4:
        layer = nn.Conv2d(
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


@torch.no_grad()
def merged_copy(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every foldable adapter replaced by a plain layer (the original is untouched)."""
    out = copy.deepcopy(backbone).eval()
    foldable = _foldable_types()

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, foldable):
                setattr(parent, name, _plain(child, _effective_weight(child).detach()))
            else:
                visit(child)

    visit(out)
    for attr in HELPER_ATTRS:
        if attr in out._modules:
            del out._modules[attr]
    for attr in ("recast_plan",):
        if hasattr(out, attr):
            delattr(out, attr)
    return out


def leftover(backbone: nn.Module, reference: nn.Module) -> list[str]:
    """Module types of ``backbone`` that ``reference`` (the stock architecture) lacks: what did not merge."""
    stock = {type(m) for m in reference.modules()} | {nn.Identity, nn.Linear, nn.Conv2d}
    return sorted({type(m).__name__ for m in backbone.modules() if type(m) not in stock} - {type(backbone).__name__})
