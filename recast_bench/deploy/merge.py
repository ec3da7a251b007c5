"""Fold a task's adapters into plain layers, where the fold is exact.

Every adapter that only changes a layer's weight declares it (:class:`recast_bench.engine.fold.Foldable`) and is
replaced by the plain ``nn.Linear`` / ``nn.Conv2d`` it gives (:meth:`Foldable.merged`) for the current task state:

* RECAST's generated-weight layers (``ReparamLinear``, ``ReparamConv2d``): ``W = mean_k sum_i C[k, i] T[i]``;
* the ViT row adapters (LoRA, MeLo, DoRA, RoSA, InfLoRA: ``RowAdaptedLinear``): their ``effective_weight()``;
* Piggyback: ``W * 1[mask > threshold]``.

Wrappers nest (``recast+lora`` is a LoRA layer around a generated-weight layer): the effective weight reads the
inner layer's current weight, so one replacement folds both. Modules that do more than change a weight (AdaptFormer's
parallel adapter, CLR's reprogramming conv, HAT's gates) stay; :func:`leftover` names them so the export can choose
a torch.export program instead. This module knows no adapter class: each layer owns its merge.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from recast_bench.engine.fold import Foldable

HELPER_ATTRS = ("recast_banks", "lora_shared")
"""Containers that only hold what merged layers already folded in (RECAST templates, shared LoRA factors)."""


@torch.no_grad()
def merged_copy(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every foldable adapter replaced by a plain layer (the original is untouched)."""
    out = copy.deepcopy(backbone).eval()

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, Foldable):  # the layer owns its merge (engine/fold.py)
                setattr(parent, name, child.merged())
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
