"""LoRA (Hu et al., 2021) on ViT layers, with the RECAST paper's Figure 3 techniques for tiny budgets.

Each target gets ``W' = W + (alpha // r) * B A`` with ``A`` (``r x in``) kaiming-uniform(a=sqrt 5) and ``B``
(``out x r``) zero, so every task starts from the pretrained (or RECAST-generated) weight. Targets are roles:
``q``, ``k``, ``v`` (row slices of timm's fused qkv: only those output rows change), ``proj``, ``fc1``, ``fc2``.
Official code followed for the ViT port: JamesQFreeman/LoRA-ViT (separate A/B per Q and V slice of the fused qkv,
added to those rows only). Scale: LoRA-ViT multiplies the update by the *integer* ``alpha // r`` with default
``alpha = 4`` (``_LoRA_qkv_timm``, since commit 0acf2ef, 2024-03-18); the RECAST authors' RECAST+MeLo
(adapters/RECAST+MeLo.py) uses r=1, alpha=4 (scale 4). Under AdamW the scale multiplies the adapter's effective lr,
so it is part of the protocol. ``alpha < r`` would make the integer scale 0 (adapter off) and is refused.

Figure 3 ("to scale LoRA to < 150 parameters"), all config options:

* lower rank: ``rank``;
* ``shared: true``: one A/B pair per role shared by every block (registered once under ``backbone.lora_shared``);
* ``density < 1``: binary-mask pruning. A fixed binary mask, drawn once from ``mask_seed`` (the same for every task
  and every run with that seed), keeps ``max(1, round(density * numel))`` entries of each A and of each B; the
  others are held at zero (their gradient is zero through the mask). The masks are not stored with a task: they are
  a function of the config. **Count**: the per-task count is the number of *unmasked* entries of every A and B
  (``count_task_params``); the stored tensors keep their dense shape (the pruned entries are zeros).

Every task re-initialises A (seeded by run seed and task index) and zeroes B; a task's state is its A and B, so
tasks are isolated exactly.
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
    kaiming_a_sqrt5_,
    low_rank_output,
    modules_of,
    task_generator,
    vit_blocks,
    wrap_targets,
)
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


def _mask(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A float {0, 1} mask with exactly ``max(1, round(density * numel))`` ones at seeded random positions."""
    n = int(torch.Size(shape).numel())
    keep = max(1, round(density * n))
    mask = torch.zeros(n)
    mask[torch.randperm(n, generator=generator)[:keep]] = 1.0
    return mask.view(shape)


def lora_vit_scale(alpha: float, rank: int) -> float:
    """LoRA-ViT's scale: ``alpha // r``, an integer division (``_LoRA_qkv_timm.forward``), not PEFT's ``alpha / r``."""
    return float(alpha // rank)


class LoRAFactors(nn.Module):
    """One LoRA pair ``A`` (``r x in``), ``B`` (``out x r``) with optional fixed pruning masks."""

    def __init__(
        self, rank: int, in_features: int, out_features: int, density: float = 1.0, generator: torch.Generator = None
    ) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.mask_A: torch.Tensor | None
        self.mask_B: torch.Tensor | None
        if density < 1.0:
            g = generator if generator is not None else torch.Generator().manual_seed(0)
            # Non-persistent: the masks are a function of the config (mask_seed), not task state.
            self.register_buffer("mask_A", _mask(self.A.shape, density, g), persistent=False)
            self.register_buffer("mask_B", _mask(self.B.shape, density, g), persistent=False)
        else:
            self.mask_A = self.mask_B = None

    def reset(self, generator: torch.Generator | None = None) -> None:
        """A kaiming-uniform(a=sqrt 5) (pruned entries zero), B zero: the update starts at exactly zero."""
        with torch.no_grad():
            a = kaiming_a_sqrt5_(torch.empty(self.A.shape), generator)
            self.A.copy_(a.to(self.A.device, self.A.dtype))
            if self.mask_A is not None:
                self.A.mul_(self.mask_A)
            self.B.zero_()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask_A is None:
            return self.A, self.B
        return self.A * self.mask_A, self.B * self.mask_B

    def delta(self, scale: float) -> torch.Tensor:
        a, b = self.factors()
        return (b @ a) * scale

    def active(self) -> int:
        if self.mask_A is None:
            return self.A.numel() + self.B.numel()
        return int(self.mask_A.sum().item() + self.mask_B.sum().item())


class LoRALinear(RowAdaptedLinear):
    """``W'[rows(p)] = W[rows(p)] + scale * B_p A_p`` for each part ``p``; other rows untouched.

    Forward (unmerged, as LoRA-ViT and PEFT compute it): ``y[rows(p)] = x W[rows(p)]^T + b + scale * (x A_p^T) B_p^T``.
    """

    def __init__(
        self, base: nn.Module, parts: dict[str, tuple[int, int]], factors: dict[str, LoRAFactors], scale: float,
        owned: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(base, parts)
        self.scale = float(scale)
        if owned:
            self.lora = nn.ModuleDict(factors)
        else:
            # Shared factors are registered once elsewhere (backbone.lora_shared); keep a plain reference here so
            # their parameters have one name and are saved once.
            object.__setattr__(self, "lora", dict(factors))

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        return rows + self.lora[part].delta(self.scale).to(rows.dtype)

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        delta = {p: low_rank_output(x, *self.lora[p].factors(), self.scale) for p in self.parts}
        return y + self.rows_to_full(delta).to(y.dtype)


@dataclass
class LoRAConfig(MethodConfig):
    """LoRA settings. Defaults: the RECAST authors' rank-1 setting on Q and V (paper section 3)."""

    rank: int = 1
    """r. RECAST paper section 3: "LoRA methods used rank=1"."""
    alpha: float = 4.0
    """Scale is the integer alpha // r (JamesQFreeman/LoRA-ViT since 0acf2ef, default alpha 4; RECAST authors'
    RECAST+MeLo: r=1, alpha=4). The paper does not state alpha."""
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    """Any of q, k, v (fused-qkv slices), proj, fc1, fc2. Hu et al. / MeLo: q, v."""
    shared: bool = False
    """Figure 3: one A/B pair per role shared by all blocks."""
    density: float = 1.0
    """Figure 3: fraction of A and B entries kept by a fixed binary mask (1 = no pruning)."""
    mask_seed: int = 0
    """Seed of the pruning masks (fixed across tasks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_low_rank(self.rank, self.alpha)
        if lora_vit_scale(self.alpha, self.rank) == 0:
            raise ValueError(f"alpha // rank is 0 for alpha {self.alpha}, rank {self.rank}: use alpha >= rank")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1] (1 = no pruning), got {self.density}")
        self.targets = list(self.targets)
        check_targets(self.targets)


@METHODS.register("lora")
class LoRA(Method[LoRAConfig]):
    """Low-rank updates on the chosen ViT roles (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = LoRAConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        backbone = model.backbone
        vit_blocks(backbone)
        scale = lora_vit_scale(cfg.alpha, cfg.rank)
        mask_gen = torch.Generator().manual_seed(cfg.mask_seed)
        shared: dict[str, LoRAFactors] = {}

        def factors_for(part: str, base: nn.Module, rows: tuple[int, int]) -> LoRAFactors:
            shape = (cfg.rank, int(base.in_features), rows[1] - rows[0])
            if cfg.shared:
                if part not in shared:
                    shared[part] = LoRAFactors(*shape, density=cfg.density, generator=mask_gen)
                return shared[part]
            return LoRAFactors(*shape, density=cfg.density, generator=mask_gen)

        def make(name: str, base: nn.Module, parts: dict[str, tuple[int, int]]) -> LoRALinear:
            facs = {p: factors_for(p, base, rows) for p, rows in parts.items()}
            return LoRALinear(base, parts, facs, scale, owned=not cfg.shared)

        device = next(backbone.parameters()).device
        wrap_targets(backbone, cfg.targets, make)
        if cfg.shared:
            backbone.lora_shared = nn.ModuleDict(shared)
        backbone.to(device)

    def _factors(self, model: TaskModel) -> dict[str, LoRAFactors]:
        return modules_of(model, LoRAFactors)

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        out = {}
        for n, f in self._factors(model).items():
            out[f"{n}.A"], out[f"{n}.B"] = f.A, f.B
        return out

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for i, f in enumerate(self._factors(model).values()):
            f.reset(task_generator(self.ctx.seed, task_index, i))

    def count_task_params(self, model: TaskModel) -> int:
        """Unmasked entries of every A and B (equal to their numel without pruning)."""
        return sum(f.active() for f in self._factors(model).values())
