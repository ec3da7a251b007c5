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

Per task on ViT-S (d=384, 12 blocks): ``12 * (2*384*b + b + 384)``: b=2 -> 23,064, b=64 -> 595,200.
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


@dataclass
class AdaptFormerConfig(MethodConfig):
    """Defaults: the RECAST authors' setting (bottleneck 2, scale 2). AdaptFormer's own: 64, 0.1, dropout 0.1."""

    bottleneck: int = 2
    """RECAST authors: 2 (AdaptFormer paper: 64)."""
    scale: float = 2.0
    """RECAST authors: 2 (AdaptFormer paper: 0.1)."""
    dropout: float = 0.1
    """AdaptFormer: 0.1, after the ReLU."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.scale == 0:
            raise ValueError("scale must be non-zero (the adapter would be switched off)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@METHODS.register("adaptformer")
class AdaptFormer(Method):
    """Parallel MLP adapters (see module docstring)."""

    name: ClassVar[str] = "adaptformer"
    Config: ClassVar[type[MethodConfig]] = AdaptFormerConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg: AdaptFormerConfig = self.cfg  # type: ignore[assignment]
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
