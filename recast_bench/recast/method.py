"""RECAST (Tran et al., ICLR 2025): per task, train only a few dozen template-mixing coefficients (and the head).

Setup, once: Neural Mimicry reconstructs the backbone's target weights as shared template banks plus per-module
coefficients (cached by weight hash), and the target layers are replaced by generated-weight layers. Per task the
templates stay frozen, the coefficients restart from their mimicked values and train with AdamW (paper: lr 2e-3 to
5e-3, weight decay 1e-6, excluded for coefficients as in soft parameter sharing / Shapeshifter). The per-task state
is the coefficients alone: ``sum_l M_l * n * K`` numbers (ViT-S MLP, G=6, n=2, K=2: 96).

BatchNorm (ResNet): the authors train in ``.train()`` mode, so BN running statistics drift from task to task --
hidden, unsaved per-task state that changes earlier tasks' behaviour. We freeze them instead: BN modules are kept in
eval mode while training (the engine's single freezing policy: every BN whose parameters are frozen, see
``engine.module.frozen_batchnorms``), so the stored coefficients fully determine a task.

Official code followed for the grouping and mimicry settings: appledora/RECAST_ICLR25 (see ``surgery``/``mimicry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.recast.mimicry import INITS, LOSSES, MimicConfig
from recast_bench.recast.pipeline import recast_backbone
from recast_bench.recast.surgery import RecastSpec, get_plan, reparam_modules
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel

PRESETS: dict[str, dict[str, Any]] = {
    # Per-task coefficient counts on ViT-S (12 blocks), spanning Figure 3's 24-96 range (groups None: 2 blocks each).
    "c24": {"target": "attn", "groups": None, "templates": 2, "sets": 1},  # 12 * 1 * 2 * 1
    "c48": {"target": "mlp", "groups": None, "templates": 2, "sets": 1},  # 12 * 2 * 2 * 1
    "c72": {"target": "mlp", "groups": 4, "templates": 3, "sets": 1},  # 12 * 2 * 3 * 1
    "c96": {"target": "mlp", "groups": None, "templates": 2, "sets": 2},  # the paper's default
    "c144": {"target": "attn+mlp", "groups": None, "templates": 2, "sets": 2},
}
MIMIC_KEY = "_recast_mimicked"
"""Attribute of each generated-weight layer holding its mimicked coefficients (the per-task starting point)."""


@dataclass
class RecastConfig(MethodConfig):
    """RECAST settings. Defaults: paper section 3 and Table 6 (G=6, n=2, K=2 on the MLP)."""

    lr: float = 2e-3
    """Paper: AdamW 2e-3 (range 2e-3 to 5e-3)."""
    weight_decay: float = 1e-6
    """Paper: 1e-6 (coefficients are excluded from it anyway)."""
    groups: int | None = None
    """G (ViT). null: two blocks per group, paper Table 6 (6 for ViT-S/B, 12 for ViT-L)."""
    templates: int = 2
    """n per bank (ViT). Paper: 2."""
    sets: int = 2
    """K. Paper: 2."""
    target: str = "mlp"
    """ViT modules: mlp | attn | attn+mlp (| +proj). Paper's main runs: mlp."""
    sharing: str | None = None
    """Figure 6a scheme low | balanced | extreme (overrides groups and templates from the depth)."""
    preset: str | None = None
    """c24 | c48 | c72 | c96 | c144: per-task counts on ViT-S (overrides target, groups, templates, sets)."""
    resnet_templates: int | None = None
    """n per ResNet stage bank; null: templated blocks per stage (authors: 2, 3, 5, 2)."""
    resnet_target: str = "conv1+conv2"
    mimic_loss: str = "smoothl1"
    """smoothl1 | mse | smoothl1_noise | vae | vae_mse. Paper's choice: SmoothL1."""
    mimic_init: str = "svd"
    """svd (closed form + refinement, ours) | random (paper)."""
    mimic_iters: int | None = None
    """null: paper (ViT 1000, ResNet 3000); SVD init stops early once the loss plateaus."""
    mimic_seed: int = 0
    cache: bool = True
    """Reuse Neural Mimicry results from ``cache_dir`` (keyed by weight hash and settings)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"recast preset must be one of {', '.join(PRESETS)} or null, got {self.preset!r}")
            for k, v in PRESETS[self.preset].items():
                setattr(self, k, v)
        if self.mimic_loss not in LOSSES:
            raise ValueError(f"recast mimic_loss must be one of {', '.join(LOSSES)}, got {self.mimic_loss!r}")
        if self.mimic_init not in INITS:
            raise ValueError(f"recast mimic_init must be one of {', '.join(INITS)}, got {self.mimic_init!r}")
        self.spec()  # validates groups, templates, sets, targets

    def spec(self) -> RecastSpec:
        return RecastSpec(
            groups=self.groups,
            templates=self.templates,
            sets=self.sets,
            target=self.target,
            sharing=self.sharing,
            resnet_templates=self.resnet_templates,
            resnet_target=self.resnet_target,
        )


PACKED_KEY = "recast.coefficients"
"""Name of RECAST's one per-task tensor: every module's (K, n) coefficients, flattened in module order."""


@METHODS.register("recast")
class Recast(Method):
    """Frozen template banks, per-task coefficients (see module docstring)."""

    name: ClassVar[str] = "recast"
    Config: ClassVar[type[MethodConfig]] = RecastConfig
    families: ClassVar[tuple[str, ...]] = ("vit", "resnet")
    composable: ClassVar[bool] = False
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg: RecastConfig = self.cfg  # type: ignore[assignment]
        family = self.ctx.family
        device = str(next(model.backbone.parameters()).device)
        mimic = MimicConfig(
            loss=cfg.mimic_loss, init=cfg.mimic_init, iters=cfg.mimic_iters, seed=cfg.mimic_seed, device=device
        )
        cache_dir = self.ctx.cache_dir if cfg.cache else None
        try:
            plan, result, _, key = recast_backbone(model.backbone, family, cfg.spec(), mimic, cache_dir)
        except ValueError as e:
            raise UserError(f"recast on {self.ctx.backbone_name or family}: {e}") from None
        self.plan, self.mimic_key, self.mimic_from_cache = plan, key, result.from_cache
        for bank in model.backbone.recast_banks.values():
            bank.templates.requires_grad_(False)
        for m in reparam_modules(model.backbone).values():
            setattr(m, MIMIC_KEY, m.coefficients.detach().clone())
            if m.bias is not None:
                m.bias.requires_grad_(False)

    def _coefficients(self, model: TaskModel) -> dict[str, nn.Parameter]:
        # Looked up by walking the modules every time, so names stay right after recast+X wrapped the layers.
        return {f"{n}.coefficients": m.coefficients for n, m in reparam_modules(model).items()}

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return self._coefficients(model)

    def no_weight_decay(self, model: TaskModel) -> set[str]:
        return set(self._coefficients(model))

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Every task starts from the mimicked coefficients (the reconstruction of the pretrained backbone)."""
        with torch.no_grad():
            for m in reparam_modules(model).values():
                m.coefficients.copy_(getattr(m, MIMIC_KEY).to(m.coefficients.device))
                m.invalidate_cache()

    def task_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """All coefficients packed into one flat tensor, in module order.

        One tensor instead of one per module keeps the per-task file at ~0.5 KB: safetensors' JSON header would
        otherwise name every module, costing more bytes than the 96 numbers it stores.
        """
        flat = [m.coefficients.detach().flatten() for m in reparam_modules(model).values()]
        return {PACKED_KEY: torch.cat(flat).clone()}

    def load_task_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        if PACKED_KEY not in state:  # per-module names (older states, or a caller passing them directly)
            super().load_task_state(model, state)
        else:
            modules = list(reparam_modules(model).values())
            packed = state[PACKED_KEY]
            total = sum(m.coefficients.numel() for m in modules)
            if packed.ndim != 1 or packed.numel() != total:
                raise ValueError(f"{PACKED_KEY} holds {packed.numel()} coefficients, this model has {total}")
            with torch.no_grad():
                for m, chunk in zip(modules, packed.split([m.coefficients.numel() for m in modules]), strict=True):
                    m.coefficients.copy_(chunk.view_as(m.coefficients))
        for m in reparam_modules(model).values():
            m.invalidate_cache()

    def per_task_params(self) -> int:
        return self.plan.per_task_params()

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        plan = getattr(self, "plan", None)
        if plan is not None:
            d |= {
                "per_task_params": plan.per_task_params(),
                "template_params": plan.template_params(),
                "banks": len(plan.banks),
                "spec": plan.spec,
                "mimic_cache_key": self.mimic_key,
                "mimic_from_cache": self.mimic_from_cache,
            }
        return d


__all__ = ["PRESETS", "Recast", "RecastConfig", "get_plan"]
