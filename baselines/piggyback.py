"""Piggyback (Mallya, Davis & Lazebnik, ECCV 2018): a learnt binary mask per weight, per task, on a frozen backbone.

Each target layer keeps its pretrained weight ``W`` frozen and learns a real-valued mask ``m`` of the same shape;
the forward pass uses ``y = layer(x, 1[m > threshold] * W)`` and the hard threshold is trained with a
straight-through estimator (the gradient w.r.t. the binary mask is passed to ``m`` unchanged). Defaults follow the
official code (arunmallya/piggyback, ``src/modnets/layers.py`` and ``scripts/run_piggyback_training.sh``): mask init
1e-2, threshold 5e-3, Adam with lr 1e-4 for masks and classifier. BatchNorm stays frozen in eval mode (the engine
keeps every BN without trainable parameters in eval). The official binariser is an old-style autograd Function
that current torch rejects; :class:`Binarize` is a static-method Function with the same semantics, which
``torch.compile`` traces as one op (no graph break). The threshold reaches it as a 0-dim buffer, so the authors' init,
which re-draws it every task, does not recompile the backbone per task.

Targets: every ResNet convolution (stem, block convs, 1x1 downsample projections unless ``skip_downsample``) or every
ViT block linear (``qkv``, ``proj``, ``fc1``, ``fc2``, plus the patch embedding unless ``include_stem`` is false).

Per-task state: the *binarised* masks only, packed 8 weights per byte (same bit order as ``numpy.packbits``), i.e.
1 bit per weight; the real-valued mask exists only while a task trains. The reported per-task count is the number
of mask entries. For ``recast+piggyback`` the mask multiplies the generated weight: ``W_recast * M``.

Schedule (flagged): the RECAST paper trained Piggyback with "default hyperparameters ... for 100 epochs" (section 3),
which is what we run (the engine's StepLR x0.1 every 33 epochs). The official script runs 30 epochs with the lr
decayed x0.1 every 15 (``run_piggyback_training.sh``: NUM_EPOCHS=30, MASK_DECAY=CLASS_DECAY=15): run it with
``trainer.epochs=30 trainer.lr_step_epochs=15 trainer.scale_lr_steps=false``.

``recast+piggyback`` as the authors ran it (appledora/RECAST_ICLR25 additional_scripts/RECAST+Piggyback train.py):

* implemented: coefficients Adam 5e-4, classifier 3e-2, masks 1e-4 (``conf/method/piggyback.yaml``'s ``recast``
  block, read only by the composite); masks on *generated* convs start at U(-1e-2, 1e-2) + 5e-3 against a
  per-layer threshold drawn from U(-5e-3, 5e-3) (their threshold is a Parameter, but the straight-through backward
  returns no gradient for it, so it stays at its draw), i.e. about half the generated weights start masked out;
  masks on the plain convs (stem, block 0, downsample) start at U(0.49, 0.51) against threshold 0, as their
  state-dict loader sets them (``init: auto`` selects all this when a masked layer's weight is generated);
* implemented, their schedule (``schedule: auto`` selects it when composed, ``authors`` forces it): over their 100
  epochs each lr is x0.1 every 33 epochs for the classifier and the coefficients but every 30 for the masks
  (``lr_mask_decay_every = 30``); and their mask optimiser, a second Adam at 1e-4 over ``shared.parameters()``,
  steps the coefficients too. Both Adams see the same gradients from the same start (no weight decay), so their
  moments are equal and the two steps add up to one Adam step at the sum of the two lrs: the coefficients' group
  runs at ``5e-4 x 0.1^floor(e / 33) + 1e-4 x 0.1^floor(e / 30)`` in (0-based) epoch ``e``, which is what
  :meth:`Piggyback.lr_scheduler` sets. Shorter runs scale both periods like the engine's StepLR
  (``trainer.scale_lr_steps``). Plain Piggyback keeps the engine's StepLR (``schedule: auto`` -> ``engine``).
* BN: their BN runs in train mode with frozen affine parameters (per-task running statistics). In the composite the
  BN handling is RECAST's (``method.recast.bn``; its ``per_task`` mode re-estimates and stores the statistics per
  task, as the authors' train mode does); plain Piggyback keeps BN frozen in eval mode, as the official code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines._resnet import conv_forward, is_conv_like, is_linear_like, linear_forward, resnet_convs, set_submodule
from baselines._vit import task_generator
from recast_bench.engine.fold import Foldable
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.config import TrainerConfig
    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel

INITS = ("auto", "official", "recast_authors")
SCHEDULES = ("auto", "engine", "authors")
AUTHORS_MASK_DECAY_EVERY = 30
"""RECAST+Piggyback script: ``lr_mask_decay_every = 30`` (classifier and coefficients: 33, the engine's period)."""
AUTHORS_SPREAD = 1e-2
"""RECAST+Piggyback script: ``mask_scale = 1e-2``, the half-width of the uniform mask init."""
AUTHORS_THRESHOLD = 5e-3
"""RECAST+Piggyback script: ``DEFAULT_THRESHOLD``, the mask offset and the half-width of the threshold draw."""

BITS_SUFFIX = "mask_bits"
"""Task-state key suffix of a layer's packed binary mask."""


@dataclass
class PiggybackConfig(MethodConfig):
    """Piggyback settings; defaults from the official ``run_piggyback_training.sh`` and ``modnets/layers.py``."""

    lr: float = 1e-4
    """LR_MASK=1e-4 (the classifier also uses LR_CLASS=1e-4)."""
    weight_decay: float = 0.0
    """The official mask optimiser has no weight decay."""
    optimizer: str = "adam"
    """``--mask_adam``."""
    mask_init: float = 1e-2
    """MASK_SCALE=1e-2: every weight starts switched on."""
    threshold: float = 5e-3
    """DEFAULT_THRESHOLD=5e-3 of the binariser."""
    skip_downsample: bool = False
    """ResNet: leave the 1x1 downsample projections unmasked (the official code masks every conv)."""
    include_stem: bool = True
    """Mask the ResNet stem conv / ViT patch embedding too (official: every layer but the classifier)."""
    init: str = "auto"
    """Mask initialisation. official: every mask at ``mask_init`` against ``threshold`` (all weights on).
    recast_authors: the authors' RECAST+Piggyback (see the module docstring). auto: recast_authors when a masked
    layer's weight is generated by RECAST (``recast+piggyback``), official otherwise."""
    schedule: str = "auto"
    """lr schedule. engine: the engine's StepLR for every group (paper section 3). authors: the authors'
    RECAST+Piggyback steps (masks every 30 epochs, the rest every 33, the coefficients also stepped by the mask
    optimiser; see the module docstring). auto: authors when a masked layer's weight is generated, engine otherwise."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ValueError(f"piggyback init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"piggyback schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.threshold < 0:
            raise ValueError(f"piggyback threshold must be >= 0, got {self.threshold}")
        if self.mask_init <= self.threshold:
            raise ValueError(
                f"piggyback mask_init ({self.mask_init}) must be > threshold ({self.threshold}), "
                "otherwise every weight starts masked out"
            )


class Binarize(torch.autograd.Function):
    """``1[m > threshold]`` forward; straight-through backward (the gradient reaches ``m`` unchanged)."""

    @staticmethod
    def forward(ctx: Any, mask: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        return (mask > threshold).to(mask.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN401
        return grad, None


def is_generated(layer: nn.Module) -> bool:
    """A layer whose weight is generated (a RECAST layer), not a plain stored ``nn.Conv2d`` / ``nn.Linear`` weight."""
    return not isinstance(layer, (nn.Conv2d, nn.Linear))


class PiggybackLayer(Foldable, nn.Module):
    """Wraps a conv or linear (plain or RECAST-generated) and masks its weight elementwise with a binary mask."""

    def __init__(self, base: nn.Module, mask_init: float, threshold: float, init: str = "official") -> None:
        super().__init__()
        if not (is_conv_like(base) or is_linear_like(base)):
            raise ValueError(f"piggyback wraps conv or linear layers, got {type(base).__name__}")
        self.base = base
        self.is_conv = is_conv_like(base)
        # The threshold as a 0-dim tensor for the forward, written in place: the authors' init re-draws it every task,
        # and as a Python float it would be a constant baked into a compiled graph (one recompile per task).
        self.register_buffer("threshold_now", torch.zeros((), device=base.weight.device), persistent=False)
        self.threshold = float(threshold)
        self.mask_init = float(mask_init)
        self.init = init
        """official | recast_authors (resolved by the method, never auto here)."""
        self.mask = nn.Parameter(torch.full_like(base.weight.detach(), self.mask_init))

    @property
    def threshold(self) -> float:
        """The mask threshold (host copy; the forward reads ``threshold_now``)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        with torch.no_grad():
            self.threshold_now.fill_(self._threshold)

    @property
    def generated(self) -> bool:
        """The base weight is generated (a RECAST layer), not a plain stored weight."""
        return is_generated(self.base)

    def binary_mask(self) -> torch.Tensor:
        return self.mask > self.threshold

    def merged_weight(self) -> torch.Tensor:
        """The base weight masked by the task's binary mask (exactly 0/1)."""
        return self.base.weight * self.binary_mask().to(self.base.weight.dtype)

    def reset_mask(self, generator: torch.Generator | None = None) -> None:
        """Official: every entry at ``mask_init``. recast_authors: the authors' random init (module docstring)."""
        with torch.no_grad():
            if self.init == "official":
                self.mask.fill_(self.mask_init)
                return
            u = torch.empty(self.mask.shape).uniform_(-1.0, 1.0, generator=generator)
            if self.generated:  # SConv2d: U(-1e-2, 1e-2) + 5e-3 against a threshold drawn from U(-5e-3, 5e-3)
                t = torch.empty(()).uniform_(-AUTHORS_THRESHOLD, AUTHORS_THRESHOLD, generator=generator)
                self.threshold = float(t)
                self.mask.copy_((u * AUTHORS_SPREAD + AUTHORS_THRESHOLD).to(self.mask.device, self.mask.dtype))
            else:  # plain convs, as their state-dict loader sets them: U(-1e-2, 1e-2) + 0.5 against threshold 0
                self.threshold = 0.0
                self.mask.copy_((u * AUTHORS_SPREAD + 0.5).to(self.mask.device, self.mask.dtype))

    def set_binary_mask(self, bits: torch.Tensor) -> None:
        """Load a binary mask: on-entries just above the threshold, off-entries the same distance below it."""
        gap = self.mask_init - self.threshold if self.init == "official" else AUTHORS_THRESHOLD
        with torch.no_grad():
            self.mask.copy_(torch.where(bits.to(self.mask.device), self.threshold + gap, self.threshold - gap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Read the base weight now: a RECAST layer generates it from the current coefficients on every call.
        w = self.base.weight * Binarize.apply(self.mask, self.threshold_now)
        return conv_forward(self.base, x, w) if self.is_conv else linear_forward(self.base, x, w)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, mask_init={self.mask_init}, init={self.init}"


class StepFactors:
    """An lr factor per epoch: ``sum(scale * gamma ** (epoch // period))`` over ``terms`` of ``(scale, period)``.

    One term is a StepLR; two are two optimisers stepping the same parameters (see the module docstring). A
    callable object rather than a closure, so the scheduler's state dict keeps it.
    """

    def __init__(self, terms: list[tuple[float, int]], gamma: float) -> None:
        self.terms = [(float(scale), int(period)) for scale, period in terms]
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        return sum(scale * self.gamma ** (epoch // period) for scale, period in self.terms)


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8, 8 entries per byte, MSB first (``numpy.packbits`` order), zero-padded.

    Packs on the tensor's own device (the engine snapshots a task's state at every validation improvement: a CPU
    round trip of ResNet-34's 21.8M mask entries each time would stall the GPU); only the packed bytes move later.
    """
    flat = bits.detach().flatten().to(torch.int32)
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_bits` for a tensor of ``shape``."""
    n = int(torch.Size(shape).numel())
    if packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, a mask of shape {tuple(shape)} needs {(n + 7) // 8}")
    bits = (packed.to(torch.int32).view(-1, 1) & _BIT_WEIGHTS.to(packed.device)) > 0
    return bits.flatten()[:n].view(shape)


def piggyback_targets(backbone: nn.Module, family: str, cfg: PiggybackConfig) -> dict[str, nn.Module]:
    """The layers Piggyback masks, by name in ``backbone``."""
    if family == "resnet":
        return resnet_convs(backbone, stem=cfg.include_stem, downsample=not cfg.skip_downsample)
    out = {n: m for n, m in backbone.named_modules() if n.startswith("blocks.") and is_linear_like(m)}
    if cfg.include_stem and hasattr(backbone, "patch_embed"):
        out = {"patch_embed.proj": backbone.patch_embed.proj, **out}
    # Keep only outermost matches: a generated-weight layer must not be picked up twice through its children.
    return {n: m for n, m in out.items() if not any(n.startswith(o + ".") for o in out if o != n)}


def family_of(backbone: nn.Module, family: str) -> str:
    """The context's family, or one inferred from module names when a test builds the method by hand."""
    if family:
        return family
    return "vit" if hasattr(backbone, "blocks") else "resnet"


@METHODS.register("piggyback")
class Piggyback(Method[PiggybackConfig]):
    """Frozen backbone; per task, a binary mask on every target weight (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = PiggybackConfig
    families: ClassVar[tuple[str, ...]] = ("resnet", "vit")
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        family = family_of(model.backbone, self.ctx.family)
        try:
            targets = piggyback_targets(model.backbone, family, cfg)
        except ValueError as e:
            raise UserError(f"piggyback on {self.ctx.backbone_name or family}: {e}") from None
        # recast+piggyback: a target's weight is generated by RECAST (set up before us).
        plain = not any(is_generated(layer) for layer in targets.values())
        init = cfg.init if cfg.init != "auto" else ("official" if plain else "recast_authors")
        self._schedule = cfg.schedule if cfg.schedule != "auto" else ("engine" if plain else "authors")
        self._wrapped: list[PiggybackLayer] = []
        """The layers wrapped here, for the schedule's parameter groups (identities survive ``model.to``)."""
        for name, layer in targets.items():
            wrapped = PiggybackLayer(layer, cfg.mask_init, cfg.threshold, init)
            set_submodule(model.backbone, name, wrapped)
            self._wrapped.append(wrapped)

    def layers(self, model: TaskModel) -> dict[str, PiggybackLayer]:
        # Walked every time so names stay right whatever else wrapped the model.
        return {n: m for n, m in model.named_modules() if isinstance(m, PiggybackLayer)}

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {f"{n}.mask": m.mask for n, m in self.layers(model).items()}

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Official: every task starts from the all-ones mask (the pretrained or RECAST-generated network).
        recast_authors: a fresh seeded random init per task (the authors rebuild the model for every task)."""
        for i, m in enumerate(self.layers(model).values()):
            m.reset_mask(task_generator(self.ctx.seed, task_index, i))

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, tcfg: TrainerConfig) -> dict | None:
        """The authors' RECAST+Piggyback steps (``schedule`` authors, or auto when composed); ``None``: the engine's.

        Per optimiser group: masks x gamma every 30 epochs; the generated layers' own trained parameters (RECAST's
        coefficients) x gamma every 33 plus the mask lr x gamma every 30 (their mask optimiser steps them too);
        everything else (the head) x gamma every 33. 33 and gamma are the trainer's (``lr_step_epochs``,
        ``lr_gamma``: the authors' 33 and 0.1); both periods scale with short runs like the engine's.
        """
        if getattr(self, "_schedule", "engine") != "authors":
            return None
        from recast_bench.engine.module import lr_step_size  # the engine's scaling of periods to short runs

        masks = {id(m.mask) for m in self._wrapped}
        generated = {id(p) for m in self._wrapped if m.generated for p in m.base.parameters()}
        every = lr_step_size(tcfg)
        mask_every = lr_step_size(dataclasses.replace(tcfg, lr_step_epochs=AUTHORS_MASK_DECAY_EVERY))
        factors = []
        for group in optimizer.param_groups:
            ids = {id(p) for p in group["params"]}
            if ids & masks or ids & generated:
                kind = "masks" if ids & masks else "coefficients"
                if not ids <= (masks if kind == "masks" else generated):
                    raise UserError(
                        f"piggyback schedule=authors steps the {kind} on their own period, but their optimiser group "
                        f"also holds other parameters (same lr); give them a different lr or set "
                        f"method.piggyback.schedule=engine"
                    )
            if ids & masks:
                factors.append(StepFactors([(1.0, mask_every)], tcfg.lr_gamma))
            elif ids & generated:  # their mask optimiser adds a step at the mask lr on its own period
                extra = self.cfg.lr / group.get("initial_lr", group["lr"])
                factors.append(StepFactors([(1.0, every), (extra, mask_every)], tcfg.lr_gamma))
            else:
                factors.append(StepFactors([(1.0, every)], tcfg.lr_gamma))
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factors), "interval": "epoch"}

    def task_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """The binarised masks, 1 bit per weight (uint8-packed)."""
        return {f"{n}.{BITS_SUFFIX}": pack_bits(m.binary_mask()) for n, m in self.layers(model).items()}

    def load_task_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        layers = self.layers(model)
        expected = {f"{n}.{BITS_SUFFIX}" for n in layers}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"piggyback state mismatch: missing {missing[:2]}, unexpected {extra[:2]}")
        for n, m in layers.items():
            m.set_binary_mask(unpack_bits(state[f"{n}.{BITS_SUFFIX}"], m.mask.shape))

    def density(self, model: TaskModel) -> float:
        """Fraction of weights the current mask keeps (the official code logs it per layer)."""
        masks = [m.binary_mask() for m in self.layers(model).values()]
        return float(sum(int(b.sum()) for b in masks) / max(1, sum(b.numel() for b in masks)))
