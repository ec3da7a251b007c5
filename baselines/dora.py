"""DoRA (Liu et al., ICML 2024): weight-decomposed low-rank adaptation on ViT attention slices.

Each adapted row block is re-parameterised as ``W' = m * V / ||V||_row`` with ``V = W + (alpha / r) B A``: a
per-output-feature magnitude ``m`` and a LoRA-updated direction. ``||.||_row`` is the L2 norm of each output row
(PEFT's convention for Linear: ``norm(W + s BA, dim=1)``), and it is detached, as in the paper's section 4.3 and
NVlabs/DoRA / PEFT ``use_dora=True`` (official code followed), so no gradient flows through the norm. ``m`` is
initialised to the row norms of the *current* base weight at each task start, so every task starts from exactly the
base layer; for ``recast+dora`` that base is the RECAST-generated weight for the task's starting coefficients.

Bias: added unscaled after the decomposed weight, as PEFT does. Defaults: rank 1 on Q and V (ViT-S:
12 * 2 * (384 + 384 + 384) = 27,648 per task); the RECAST paper's text says Q, K, V (``targets: [q, k, v]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from baselines._vit import (
    RowAdaptedLinear,
    check_low_rank,
    check_targets,
    modules_of,
    task_generator,
    vit_blocks,
    wrap_targets,
)
from baselines.lora import LoRAFactors
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


class DoRALinear(RowAdaptedLinear):
    """``W'[rows(p)] = m_p * (W_p + s B_p A_p) / ||W_p + s B_p A_p||_row`` (norm detached); other rows untouched."""

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], rank: int, scale: float) -> None:
        super().__init__(base, parts)
        self.scale = float(scale)
        self.lora = nn.ModuleDict({p: LoRAFactors(rank, self.in_features, b - a) for p, (a, b) in self.parts.items()})
        self.magnitude = nn.ParameterDict({p: nn.Parameter(torch.ones(b - a)) for p, (a, b) in self.parts.items()})

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        v = rows + self.lora[part].delta(self.scale).to(rows.dtype)
        norm = v.norm(p=2, dim=1).detach()
        return v * (self.magnitude[part] / norm).unsqueeze(1)

    def reset(self, generator: torch.Generator) -> None:
        """Fresh LoRA pair; ``m`` = row norms of the base weight as it is now (so ``W' == W`` at the start)."""
        with torch.no_grad():
            w = self.base.weight.detach()
            for p, (a, b) in self.parts.items():
                self.lora[p].reset(generator)
                self.magnitude[p].copy_(w[a:b].norm(p=2, dim=1).to(self.magnitude[p].dtype))


@dataclass
class DoRAConfig(MethodConfig):
    """DoRA settings; defaults from the RECAST paper section 3 (rank 1) and Table 2's 27,648-parameter row (Q, V)."""

    rank: int = 1
    """RECAST paper section 3: rank 1."""
    alpha: float = 1.0
    """Scale alpha / r (alpha = r: unscaled, as the LoRA-ViT baselines)."""
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    """q, v (27,648 on ViT-S); the paper's text says q, k, v (41,472)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_low_rank(self.rank, self.alpha)
        self.targets = list(self.targets)
        check_targets(self.targets)


@METHODS.register("dora")
class DoRA(Method):
    """Magnitude + LoRA direction on the chosen roles (see module docstring)."""

    name: ClassVar[str] = "dora"
    Config: ClassVar[type[MethodConfig]] = DoRAConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg: DoRAConfig = self.cfg  # type: ignore[assignment]
        vit_blocks(model.backbone)
        device = next(model.backbone.parameters()).device
        wrap_targets(
            model.backbone, cfg.targets, lambda n, base, parts: DoRALinear(base, parts, cfg.rank, cfg.alpha / cfg.rank)
        )
        model.backbone.to(device)
        for layer in modules_of(model, DoRALinear).values():
            layer.reset(torch.Generator().manual_seed(self.ctx.seed))

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        out = {}
        for n, layer in modules_of(model, DoRALinear).items():
            for p in layer.parts:
                out[f"{n}.lora.{p}.A"] = layer.lora[p].A
                out[f"{n}.lora.{p}.B"] = layer.lora[p].B
                out[f"{n}.magnitude.{p}"] = layer.magnitude[p]
        return out

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for i, layer in enumerate(modules_of(model, DoRALinear).values()):
            layer.reset(task_generator(self.ctx.seed, task_index, i))
