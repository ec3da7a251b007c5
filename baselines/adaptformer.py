"""AdaptFormer (Chen et al., NeurIPS 2022): a parallel bottleneck adapter beside every ViT block's MLP.

``out = x + MLP(LN(x)) + s * Up(Dropout(ReLU(Down(x))))``. The adapter's input is the block's pre-MLP residual
stream ``x``, *not* ``LN(x)``: in ShoufaChen/AdaptFormer (official code followed) ``Block.forward`` calls
``self.adaptmlp(x, add_residual=False)`` on the residual before ``norm2``, and the ViT config builds the adapter with
``adapter_layernorm_option="none"`` (no LayerNorm of its own). Down is kaiming-uniform(a=sqrt 5), Up and both
biases are zero ("lora" init), so each task starts from the unadapted block; the scale ``s`` is a fixed scalar.

Surgery: ``blocks.N.mlp`` is replaced by :class:`ParallelAdapterMLP`, which holds the block's ``norm2``, ``mlp``,
``ls2`` and ``drop_path2`` (moved in; the block's own slots become ``Identity``) plus the adapter, so that the block's
unchanged ``x + drop_path2(ls2(mlp(norm2(x))))`` computes exactly the equation above (drop-path and layer-scale
apply to the MLP branch only, as in the official code). The original MLP's fc1/fc2 are untouched, so they may be
RECAST's generated-weight layers (``recast+adaptformer``).

Per task on ViT-S (d=384, 12 blocks): ``12 * (2*384*b + b + 384)``: b=1 -> 13,836, b=2 -> 23,064, b=64 -> 595,200.

Variants (``variant``; the fields left null take the variant's values):

* ``paper`` (default): the RECAST paper's rank-1 budget. Section 3: "LoRA methods used rank=1 ... Adaptformer (MLP
  layers)", and Table 2's 6e-4 P is exactly b=1 (13,836 on ViT-S). Scale: the authors' formula ``alpha // b`` with
  their alpha 4 (adapters/RECAST + Adaptformer.py), i.e. 4 at b=1. Dropout 0.1 after the ReLU: the official
  AdaptFormer (ShoufaChen/AdaptFormer, ``adapter_dropout`` 0.1); the paper does not state it.
* ``authors``: what the RECAST authors' file runs, ``AdaptMLP(r=2, alpha=4)``: b=2, scale 4 // 2 = 2, and no
  dropout in the adapter branch (their ``_LoRA_Block`` has none): 23,064 per task = 1.05e-3 P, which does not match
  Table 2's 6e-4 P. Select with ``method.adaptformer.variant=authors``.

Where X goes in ``recast+adaptformer``: the adapter is a parallel branch beside the block's MLP; it never touches a
weight. The authors' RECAST+AdaptFormer templates the attention (qkv) and keeps the MLP plain, so
``conf/method/adaptformer.yaml`` sets ``recast.target: attn`` for the composite (read only by ``recast+adaptformer``;
``method.recast.target=mlp`` on the command line puts both on the MLP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines._vit import kaiming_a_sqrt5_, modules_of, task_generator, vit_blocks
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


class Adapter(nn.Module):
    """``s * Up(Dropout(ReLU(Down(x))))`` with AdaptFormer's "lora" init."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.reset()

    def reset(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            w = kaiming_a_sqrt5_(torch.empty(self.down.weight.shape), generator)
            self.down.weight.copy_(w.to(self.down.weight.device, self.down.weight.dtype))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        return self.up(h) * self.scale


class ParallelAdapterMLP(nn.Module):
    """``drop_path(ls(mlp(norm(x)))) + adapter(x)``; the block adds the residual ``x``."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, ls: nn.Module, drop_path: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.norm, self.mlp, self.ls, self.drop_path = norm, mlp, ls, drop_path
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.ls(self.mlp(self.norm(x)))) + self.adapter(x)


VARIANTS: dict[str, dict[str, float]] = {
    # RECAST paper section 3 (rank 1) and Table 2 (6e-4 P = b 1); scale = authors' alpha 4 // b; official dropout.
    "paper": {"bottleneck": 1, "scale": 4.0, "dropout": 0.1},
    # appledora/RECAST_ICLR25 adapters/RECAST + Adaptformer.py: AdaptMLP(r=2, alpha=4), scale alpha // r, no dropout.
    "authors": {"bottleneck": 2, "scale": 2.0, "dropout": 0.0},
}


@dataclass
class AdaptFormerConfig(MethodConfig):
    """Defaults: the paper's rank-1 budget (``variant: paper``); ``variant: authors`` is the authors' b=2 file."""

    variant: str = "paper"
    """paper (b 1, scale 4, dropout 0.1) | authors (b 2, scale 2, dropout 0) | custom (set all three)."""
    bottleneck: int | None = None
    """null: from the variant. Paper: rank 1 (Table 2's 6e-4 P); authors: 2; AdaptFormer's own default: 64."""
    scale: float | None = None
    """null: from the variant. Authors' formula alpha // b with alpha 4 (paper 4, authors 2); AdaptFormer's: 0.1."""
    dropout: float | None = None
    """null: from the variant. Official AdaptFormer 0.1 after the ReLU (paper); the authors' adapter has none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in (*VARIANTS, "custom"):
            raise ValueError(f"adaptformer variant must be one of {', '.join(VARIANTS)}, custom; got {self.variant!r}")
        preset = VARIANTS.get(self.variant, {})
        for key in ("bottleneck", "scale", "dropout"):
            if getattr(self, key) is None:
                if key not in preset:
                    raise ValueError(f"adaptformer variant custom needs {key} set")
                setattr(self, key, preset[key])
        self.bottleneck = int(self.bottleneck)
        if self.bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.scale == 0:
            raise ValueError("scale must be non-zero (the adapter would be switched off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@METHODS.register("adaptformer")
class AdaptFormer(Method[AdaptFormerConfig]):
    """Parallel MLP adapters (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = AdaptFormerConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        device = next(model.backbone.parameters()).device
        for i, block in enumerate(vit_blocks(model.backbone)):
            if not all(hasattr(block, a) for a in ("norm2", "mlp", "ls2", "drop_path2")):
                raise UserError(f"blocks.{i} is not a timm ViT Block (needs norm2, mlp, ls2, drop_path2)")
            if isinstance(block.mlp, ParallelAdapterMLP):
                raise UserError(f"blocks.{i}.mlp already has an AdaptFormer adapter")
            dim = int(block.norm2.normalized_shape[0]) if hasattr(block.norm2, "normalized_shape") else None
            if dim is None:
                raise UserError(f"cannot infer the width of blocks.{i} from its norm2")
            adapter = Adapter(dim, cfg.bottleneck, cfg.scale, cfg.dropout)
            block.mlp = ParallelAdapterMLP(block.norm2, block.mlp, block.ls2, block.drop_path2, adapter)
            block.norm2, block.ls2, block.drop_path2 = nn.Identity(), nn.Identity(), nn.Identity()
        model.backbone.to(device)

    def _adapters(self, model: TaskModel) -> dict[str, Adapter]:
        return modules_of(model, Adapter)

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {f"{n}.{k}": p for n, a in self._adapters(model).items() for k, p in a.named_parameters()}

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for i, a in enumerate(self._adapters(model).values()):
            a.reset(task_generator(self.ctx.seed, task_index, i))
