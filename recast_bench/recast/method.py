"""RECAST (Tasnim & Plummer, "RECAST: Reparameterized, Compact weight Adaptation for Sequential Tasks", ICLR 2025).

Per task, train only template-mixing coefficients (and the task's head). Setup, once: Neural Mimicry reconstructs the
backbone's target weights as shared template banks plus per-module coefficients (cached by weight hash, run on the
run's device), and the target layers are replaced by generated-weight layers. Per task the templates stay frozen, the
coefficients restart from their mimicked values and train with AdamW (paper section 3: lr 2e-3 to 5e-3, weight decay
1e-6; coefficients are excluded from decay as in soft parameter sharing / Shapeshifter, so it does not act on them).

Variants (``RecastConfig.variant``, the documented switch):

* ``paper`` (default): Neural Mimicry as the paper ran it (see :mod:`recast_bench.recast.mimicry`): random init,
  RMSprop, 1000 iterations for ViT and 3000 for ResNet, StepLR, grad-norm clip 1.0, lowest-loss copy, and the
  coefficient noise 1e-4 of the authors' ViT run.
* ``svd`` (ours; reported as the row "RECAST, SVD init (ours)"): closed-form least-squares templates, scaled so that
  template norms relative to the weights match what the paper's procedure ends at, and K distinct coefficient sets
  whose mean is the exact reconstruction.

Per-task counts, stated truthfully. The per-task trainable state is ``sum_l M_l * n * K`` coefficients: ViT-S MLP,
G=6, n=2, K=2: 96; ResNet-34 (authors' banks 2, 3, 5, 2 on conv1 and conv2, K=2): 168. Both equal the authors' code
(appledora/RECAST_ICLR25) and contradict the paper's text, which says "fewer than 50" parameters per task and gives
fractions of "2e-6 P" (ViT-S) and "3e-6 P" (ResNet-34). Moreover the generated weight is linear in the coefficients
(``W = mean_k sum_i C[k, i] T[i]``), so K sets express exactly what their mean expresses: the function has ``sum_l
M_l * n`` degrees of freedom per task (48 on ViT-S, 84 on ResNet-34), and under Adam without weight decay all K sets
get identical gradients and identical updates, so K does not change training either (measured by
``python -m recast_bench.recast.study``).

BatchNorm (ResNet), ``RecastConfig.bn``:

* ``per_task`` (default): the authors train in ``.train()`` mode and reload the shared weights before each task, so
  BN running statistics re-adapt to every task from the pretrained ones. We do the same and store each task's
  statistics with the task (one packed tensor), so they are saved, counted in ``bytes_per_task`` and restored to
  evaluate the task: the hidden per-task state of the authors' code made honest. They are buffers, not trained
  parameters: the per-task trainable count stays the coefficients; ``describe()`` reports the buffer count
  (ResNet-34: 17,024 statistics, 68 KB in float32 per task, beside 168 coefficients).
* ``frozen`` (ours, selectable): BN stays in eval mode with the pretrained statistics, so the coefficients alone
  determine a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from recast_bench.engine.method import Method, MethodConfig, assign_state
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
VARIANTS = {"paper": "random", "svd": "svd"}
"""variant -> Neural Mimicry init."""
ROW_NAMES = {"paper": "RECAST", "svd": "RECAST, SVD init (ours)"}
BN_MODES = ("per_task", "frozen")
MIMIC_KEY = "_recast_mimicked"
"""Attribute of each generated-weight layer holding its mimicked coefficients (the per-task starting point)."""


@dataclass
class RecastConfig(MethodConfig):
    """RECAST settings; each default names its source."""

    lr: float = 2e-3
    """Paper section 3: AdamW 2e-3 (range 2e-3 to 5e-3); authors' notebooks: 2e-3."""
    weight_decay: float = 1e-6
    """Paper section 3: 1e-6 (coefficients are excluded from it: ours, after soft parameter sharing)."""
    variant: str = "paper"
    """paper: Neural Mimicry as the paper ran it (default). svd: closed-form SVD init, the extra row
    "RECAST, SVD init (ours)"."""
    groups: int | None = None
    """G (ViT). null: two blocks per group, paper Table 6 (6 for ViT-S/B, 12 for ViT-L)."""
    templates: int = 2
    """n per bank (ViT). Paper section 3 and Table 6: 2."""
    sets: int = 2
    """K. Paper section 3 and Table 6: 2 (the function only depends on the mean of the K sets; see module doc)."""
    target: str = "mlp"
    """ViT modules: mlp | attn | attn+mlp (| +proj). Paper's main runs and authors' RECAST-MLP: mlp."""
    sharing: str | None = None
    """Figure 6a scheme low | balanced | extreme (overrides groups and templates from the depth); null: off."""
    preset: str | None = None
    """c24 | c48 | c72 | c96 | c144: per-task counts on ViT-S (overrides target, groups, templates, sets); null: off."""
    resnet_templates: int | None = None
    """n per ResNet stage bank; null: templated blocks per stage (authors' RECAST-resnet: 2, 3, 5, 2)."""
    resnet_target: str = "conv1+conv2"
    """ResNet convs templated (authors' RECAST-resnet: conv1 and conv2 of blocks 1.. of each stage)."""
    bn: str = "per_task"
    """ResNet BatchNorm: per_task (authors train in .train() mode; we store the statistics per task) | frozen
    (ours: eval mode, pretrained statistics)."""
    mimic_loss: str | None = None
    """smoothl1 | mse | smoothl1_noise | vae | vae_mse. null: authors' notebooks (ViT smoothl1_noise with sigma 1e-4,
    ResNet smoothl1); paper section 3.2 names SmoothL1 best."""
    mimic_init: str | None = None
    """Lower-level knob: random (paper) | svd (ours). null: from variant."""
    mimic_iters: int | None = None
    """null: authors' notebooks (ViT 1000 as in paper Table 5, ResNet 3000, VAE 2500)."""
    mimic_template_ratio: float | None = None
    """svd only: template norm / weight norm; null: measured after the paper's procedure (mimicry.SVD_SCALE; ours)."""
    mimic_set_spread: float | None = None
    """svd only: spread of the K sets around their mean; null: measured after the paper's procedure (ours)."""
    mimic_seed: int = 0
    """Seed of Neural Mimicry (ours; the authors' notebooks seed 42 globally)."""
    cache: bool = True
    """Reuse Neural Mimicry results from cache_dir (keyed by weight hash and every result-changing setting)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"recast preset must be one of {', '.join(PRESETS)} or null, got {self.preset!r}")
            for k, v in PRESETS[self.preset].items():
                setattr(self, k, v)
        if self.variant not in VARIANTS:
            raise ValueError(f"recast variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.bn not in BN_MODES:
            raise ValueError(f"recast bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")
        if self.mimic_loss is not None and self.mimic_loss not in LOSSES:
            raise ValueError(f"recast mimic_loss must be one of {', '.join(LOSSES)}, got {self.mimic_loss!r}")
        if self.mimic_init is not None and self.mimic_init not in INITS:
            raise ValueError(f"recast mimic_init must be one of {', '.join(INITS)}, got {self.mimic_init!r}")
        self.spec()  # validates groups, templates, sets, targets
        self.mimic_config()  # validates the mimicry settings

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

    def mimic_config(self, device: str = "cpu") -> MimicConfig:
        """The Neural Mimicry settings of this variant (``mimic_init`` overrides the variant's init)."""
        return MimicConfig(
            loss=self.mimic_loss,
            init=self.mimic_init_resolved,
            iters=self.mimic_iters,
            template_ratio=self.mimic_template_ratio,
            set_spread=self.mimic_set_spread,
            seed=self.mimic_seed,
            device=device,
        )

    @property
    def mimic_init_resolved(self) -> str:
        """The Neural Mimicry init: ``mimic_init`` where set, else the variant's."""
        return self.mimic_init or VARIANTS[self.variant]

    @property
    def row_name(self) -> str:
        """The name of this configuration's row in tables and figures."""
        return ROW_NAMES["svd" if self.mimic_init_resolved == "svd" else "paper"]


PACKED_KEY = "recast.coefficients"
"""Name of RECAST's per-task coefficient tensor: every module's (K, n) coefficients, flattened in module order."""
PACKED_BN_KEY = "recast.bn_statistics"
"""bn=per_task: every BatchNorm's running mean and variance, flattened in module order (one tensor, small header)."""


def _run_device(device: str) -> str:
    # The run's device; a CUDA device string without CUDA (a config copied from a GPU machine) falls back to CPU.
    return device if not device.startswith("cuda") or torch.cuda.is_available() else "cpu"


@METHODS.register("recast")
class Recast(Method[RecastConfig]):
    """Frozen template banks, per-task coefficients (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = RecastConfig
    families: ClassVar[tuple[str, ...]] = ("vit", "resnet")
    composable: ClassVar[bool] = False
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        family = self.ctx.family
        mimic = cfg.mimic_config(_run_device(self.ctx.device or "cpu"))
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
        # The statistics every task starts from: the pretrained ones (the authors reload the shared weights per task).
        self._bn_start = {k: v.detach().clone() for k, v in self.task_buffers(model).items()}

    def _coefficients(self, model: TaskModel) -> dict[str, nn.Parameter]:
        # Looked up by walking the modules every time, so names stay right after recast+X wrapped the layers.
        return {f"{n}.coefficients": m.coefficients for n, m in reparam_modules(model).items()}

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return self._coefficients(model)

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """bn=per_task: the running mean and variance of every BatchNorm (the engine keeps these in train mode)."""
        if self.cfg.bn != "per_task":
            return {}
        out = {}
        for n, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                out[f"{n}.running_mean"] = m.running_mean
                out[f"{n}.running_var"] = m.running_var
        return out

    def no_weight_decay(self, model: TaskModel) -> set[str]:
        return set(self._coefficients(model))

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Every task starts from the mimicked coefficients and, with bn=per_task, the pretrained BN statistics."""
        with torch.no_grad():
            for m in reparam_modules(model).values():
                m.coefficients.copy_(getattr(m, MIMIC_KEY).to(m.coefficients.device))
                m.invalidate_cache()
            current = self.task_buffers(model)
            for k, v in getattr(self, "_bn_start", {}).items():
                current[k].copy_(v.to(current[k].device))

    def task_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """All coefficients packed into one flat tensor, in module order (plus, with bn=per_task, the BN statistics).

        One tensor instead of one per module keeps the per-task file at ~0.5 KB: safetensors' JSON header would
        otherwise name every module, costing more bytes than the 96 numbers it stores.
        """
        flat = [m.coefficients.detach().flatten() for m in reparam_modules(model).values()]
        state = {PACKED_KEY: torch.cat(flat).clone()}
        bn = self.task_buffers(model)
        if bn:
            state[PACKED_BN_KEY] = torch.cat([v.detach().flatten().float() for v in bn.values()]).clone()
        return state

    def load_task_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        rest = {k: v for k, v in state.items() if k not in (PACKED_KEY, PACKED_BN_KEY)}
        if rest:  # per-module names (older states, or a caller passing them directly)
            assign_state(model, rest)
        if PACKED_KEY in state:
            _unpack(state[PACKED_KEY], [m.coefficients for m in reparam_modules(model).values()], PACKED_KEY)
        if PACKED_BN_KEY in state:
            _unpack(state[PACKED_BN_KEY], list(self.task_buffers(model).values()), PACKED_BN_KEY)
        for m in reparam_modules(model).values():
            m.invalidate_cache()

    def per_task_params(self) -> int:
        return self.plan.per_task_params()

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        d: dict[str, Any] = {"name": self.name, "row": cfg.row_name, "variant": cfg.variant}
        plan = getattr(self, "plan", None)
        if plan is not None:
            bn_numbers = sum(v.numel() for v in getattr(self, "_bn_start", {}).values())
            d |= {
                "per_task_params": plan.per_task_params(),
                "per_task_buffers": bn_numbers,
                "bn": cfg.bn if plan.family == "resnet" else None,
                "template_params": plan.template_params(),
                "banks": len(plan.banks),
                "spec": plan.spec,
                "mimic_cache_key": self.mimic_key,
                "mimic_from_cache": self.mimic_from_cache,
            }
        return d


def _unpack(packed: torch.Tensor, targets: list[torch.Tensor], key: str) -> None:
    total = sum(t.numel() for t in targets)
    if packed.ndim != 1 or packed.numel() != total:
        raise ValueError(f"{key} holds {packed.numel()} numbers, this model has {total}")
    with torch.no_grad():
        for t, chunk in zip(targets, packed.split([t.numel() for t in targets]), strict=True):
            t.copy_(chunk.view_as(t))


__all__ = ["PRESETS", "Recast", "RecastConfig", "get_plan"]
