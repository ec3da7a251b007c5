"""DoRA (Liu et al., ICML 2024): weight-decomposed low-rank adaptation on ViT attention slices.

Each adapted row block is re-parameterised as ``W' = m * V / ||V||_row`` with ``V = W + (alpha / r) B A``: a
per-output-feature magnitude ``m`` and a LoRA-updated direction. ``||.||_row`` is the L2 norm of each output row
(PEFT's convention for Linear: ``norm(W + s BA, dim=1)``), and it is detached, as in the paper's section 4.3 and
NVlabs/DoRA / PEFT ``use_dora=True`` (official code followed), so no gradient flows through the norm. ``m`` is
initialised to the row norms of the *current* base weight at each task start, so every task starts from exactly the
base layer.

Where X goes in ``recast+dora``: DoRA normalises whatever weight its target layer produces. With RECAST's default
``target=mlp`` the Q, K, V slices belong to the plain, pretrained ``qkv``, so DoRA sits *beside* RECAST (RECAST
re-generates fc1/fc2, DoRA adapts qkv). Only with ``method.recast.target=attn`` (or ``attn+mlp``) does DoRA normalise
the generated ``W_recast + s B A``.

Bias: added unscaled after the decomposed weight, as PEFT does. Defaults: rank 1 on Q, K and V (RECAST paper
section 3: "DoRA (Q,K,V matrices)"; Table 2's 1.9e-3 P is exactly this on ViT-S: 12 * 3 * (384 + 384 + 384) =
41,472 per task), scale alpha / r with alpha = 2 (NVlabs/DoRA's examples use alpha = 2r; the paper does not state
alpha: our choice, flagged).
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
    low_rank_output,
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
    """``W'[rows(p)] = m_p * (W_p + s B_p A_p) / ||W_p + s B_p A_p||_row`` (norm detached); other rows untouched.

    Forward, unmerged as NVlabs/DoRA (``dora.py`` Linear.forward) and PEFT (``DoraLinearLayer.forward``) compute it:
    ``y_p = (m_p / ||V_p||) * (x W_p^T + s (x A_p^T) B_p^T) + b_p``. The merged ``V_p = W_p + s B_p A_p`` is formed
    only for its row norms, in float32 and without autograd (the norm is a constant in the backward pass), so no
    ``out x in`` gradient is computed and the low-rank delta never goes through a bf16 weight.
    """

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]], rank: int, scale: float) -> None:
        super().__init__(base, parts)
        self.scale = float(scale)
        self.lora = nn.ModuleDict({p: LoRAFactors(rank, self.in_features, b - a) for p, (a, b) in self.parts.items()})
        self.magnitude = nn.ParameterDict({p: nn.Parameter(torch.ones(b - a)) for p, (a, b) in self.parts.items()})

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        v = rows + self.lora[part].delta(self.scale).to(rows.dtype)
        norm = v.norm(p=2, dim=1).detach()
        return v * (self.magnitude[part] / norm).unsqueeze(1)

    def row_norm(self, part: str, w: torch.Tensor) -> torch.Tensor:
        """``||W_p + s B_p A_p||_row`` in float32, outside autograd and autocast (a constant of the backward pass)."""
        f = self.lora[part]
        with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
            v = w.detach().float() + f.delta(self.scale).detach().float()
            return v.norm(p=2, dim=1)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Per part: (m / ||V||) (x W^T + s x A^T B^T) + b = r (y + d) + (1 - r) b with y the base output (bias
        # included), over every row at once: r = 1 and d = 0 on the rows of no part, which stay exactly y.
        # The ratio r stays float32 (as PEFT's): in bf16 it would round away small changes of m.
        ratio = {p: self.magnitude[p] / self.row_norm(p, w[a:b]) for p, (a, b) in self.parts.items()}
        delta = {p: low_rank_output(x, *self.lora[p].factors(), self.scale).to(y.dtype) for p in self.parts}
        r = self.rows_to_full(ratio, fill=1.0)
        out = r * (y + self.rows_to_full(delta))
        bias = self.base.bias
        return (out if bias is None else out + (1 - r) * bias).to(y.dtype)

    def reset(self, generator: torch.Generator) -> None:
        """Fresh LoRA pair; ``m`` = row norms of the base weight as it is now (so ``W' == W`` at the start)."""
        with torch.no_grad():
            w = self.base.weight.detach()
            for p, (a, b) in self.parts.items():
                self.lora[p].reset(generator)
                self.magnitude[p].copy_(w[a:b].norm(p=2, dim=1).to(self.magnitude[p].dtype))


@dataclass
class DoRAConfig(MethodConfig):
    """DoRA settings; defaults from the RECAST paper section 3 (rank 1; Q, K, V) and Table 2 (1.9e-3 P)."""

    rank: int = 1
    """RECAST paper section 3: "LoRA methods used rank=1"."""
    alpha: float = 2.0
    """Scale alpha / r (PEFT / NVlabs/DoRA convention). Paper: unstated. Ours, flagged: alpha = 2r as in the
    NVlabs/DoRA example runs (e.g. r=32, alpha=64)."""
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])
    """RECAST paper section 3: "DoRA (Q,K,V matrices)"; 41,472 per task on ViT-S = Table 2's 1.9e-3 P."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_low_rank(self.rank, self.alpha)
        self.targets = list(self.targets)
        check_targets(self.targets)


@METHODS.register("dora")
class DoRA(Method[DoRAConfig]):
    """Magnitude + LoRA direction on the chosen roles (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = DoRAConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
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
