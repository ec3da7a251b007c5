"""HAT, Hard Attention to the Task (Serra et al., ICML 2018), on torchvision ResNets.

Every unit (output channel of each conv) gets a per-task embedding ``e_t``; its gate ``a = sigmoid(s * e_t)``
multiplies the unit's output. During training ``s`` is annealed linearly from ``1/smax`` to ``smax`` over each
epoch's batches; evaluation uses ``smax`` (400), where almost every gate is exactly 0 or 1 in float32. The shared
conv weights train with plain SGD, but the gradient of ``W[o, i]`` is scaled by ``1 - min(a_prev[o], a_prev[i])``,
with ``a_prev`` the element-wise max of all earlier tasks' gates (the cumulative mask), so units earlier tasks use
are (almost) frozen. A regulariser ``c * sum(a * (1 - a_prev)) / sum(1 - a_prev)`` (c = 0.75) keeps the new task's
capacity small, embedding gradients are compensated for the annealing (paper eq. 9, ``thres_cosh`` 50) and
embeddings are clamped to +-6 after each step. Defaults follow the official code (joansj/hat,
``src/approaches/hat.py``: SGD lr 0.05, smax 400, lamb 0.75, gradient-norm clip 10000 on the protocol card) and so
does the schedule (``HatConfig.schedule``): the lr is divided by 3 after 5 epochs without a lower validation loss, a
task stops once the lr is below 1e-4, and the epoch of the lowest validation loss is restored. The official code has
only AlexNet/MLP models, so the ResNet parts below are ours.

ResNet specifics (what the official code does not cover):

* **Gate placement.** The gate multiplies each BatchNorm's output (after conv + BN, before the ReLU; the ReLU
  commutes with a positive gate): the stem ``bn1``, every block's ``bnK`` and every ``downsample.1``. Nothing is
  gated after the residual add. A channel of a block's output is therefore zero for a task only when both the
  residual branch gate and the shortcut are zero, so the *input* mask of the next convs is the residual stream's
  mask: ``max`` over the gates feeding the stream (``max(a_bn2, a_downsample)`` after a projection block,
  ``max(a_bn2, stream_in)`` after an identity block). Gradient masks use those stream masks as ``a_prev[i]``.
* **Per-task BatchNorm.** BN affine parameters and running statistics are task state (trained per task, restarted
  from the pretrained BN); only the convs are shared. This is our addition and necessary: the official models have
  no BN, and a BN shared across tasks would change every earlier task's activations, which the gradient masks
  cannot prevent.

Compilation (``trainer.compile``): no graph break; the annealed ``s`` is a 0-dim buffer written in place each batch,
so the compiled training forward is one graph for the whole task (a Python float was a guarded constant, recompiled
once it changed; tests/test_baselines_resnet.py). Numerics are unchanged (the same fp32 product).

State: task parameters are the current task's embeddings and BN; shared parameters are the conv weights; the
cumulative masks are shared buffers (saved for resume). Gates at ``smax`` are not exactly binary for embeddings
near zero, so earlier tasks' units may still move slightly: ``isolates_tasks`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from baselines._resnet import (
    bn_after,
    bn_buffers,
    bn_parameters,
    resnet_blocks,
    resnet_convs,
    restore,
    set_submodule,
    snapshot,
)
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.config import TrainerConfig
    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


SCHEDULES = ("official", "paper")


@dataclass
class HatConfig(MethodConfig):
    """HAT settings; defaults from the official ``src/approaches/hat.py``."""

    lr: float = 0.05
    """hat.py ``lr=0.05``."""
    schedule: str = "official"
    """``official``: hat.py ``Appr.train``: the lr is divided by ``lr_factor`` once ``lr_patience`` epochs in a row
    have not lowered the validation loss (cross-entropy plus the regulariser at ``smax``, as the official ``eval``),
    the task stops once the lr falls below ``lr_min`` (``trainer.epochs``, 100 as the official ``nepochs``, is the
    upper bound), and the epoch with the lowest validation loss is restored. ``paper``: the engine's StepLR of the
    adapter rows (x ``trainer.lr_gamma`` every ``trainer.lr_step_epochs``, paper section 3) and the epoch of the
    highest validation accuracy, as this port ran before."""
    lr_factor: float = 3.0
    """hat.py ``lr_factor=3``: the lr is divided by it on a plateau."""
    lr_patience: int = 5
    """hat.py ``lr_patience=5``: epochs without a lower validation loss before the lr is divided."""
    lr_min: float = 1e-4
    """hat.py ``lr_min=1e-4``: the task stops once the lr is below it."""
    optimizer: str = "sgd"
    """hat.py: ``torch.optim.SGD`` without momentum."""
    momentum: float = 0.0
    """hat.py: no momentum."""
    weight_decay: float = 0.0
    """hat.py: no weight decay (it would move frozen units' weights)."""
    smax: float = 400.0
    """hat.py ``smax=400``."""
    c: float = 0.75
    """hat.py ``lamb=0.75``: weight of the capacity regulariser."""
    thres_cosh: float = 50.0
    """hat.py: clamp of ``s * e`` in the gradient compensation."""
    thres_emb: float = 6.0
    """hat.py: embeddings are clamped to ``[-thres_emb, thres_emb]`` after every step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise ValueError(f"hat schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.lr_factor <= 1 or self.lr_patience < 1 or self.lr_min < 0:
            raise ValueError(
                f"hat needs lr_factor > 1, lr_patience >= 1 and lr_min >= 0, got {self.lr_factor}, "
                f"{self.lr_patience}, {self.lr_min}"
            )
        if self.smax <= 1:
            raise ValueError(f"hat smax must be > 1 (s is annealed from 1/smax to smax), got {self.smax}")
        if self.c < 0:
            raise ValueError(f"hat c (regulariser weight) must be >= 0, got {self.c}")
        if self.thres_cosh <= 0 or self.thres_emb <= 0:
            raise ValueError(f"hat thres_cosh and thres_emb must be > 0, got {self.thres_cosh}, {self.thres_emb}")
        if self.momentum != 0 or self.weight_decay != 0:
            # Both move weights whose gradient HAT masked to zero, silently breaking the protection of old tasks.
            raise ValueError("hat needs momentum 0 and weight_decay 0 (they update gradient-masked weights)")


class GatedBatchNorm(nn.Module):
    """A BatchNorm whose output channels are multiplied by the HAT gates ``sigmoid(s * e)``."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, smax: float) -> None:
        super().__init__()
        self.bn = bn
        self.smax = float(smax)
        self.embedding = nn.Parameter(torch.zeros(bn.num_features, device=bn.weight.device))
        self.register_buffer("cumulative", torch.zeros(bn.num_features, device=bn.weight.device))
        # The annealed temperature as a 0-dim tensor read by the forward: a new value is written in place each batch,
        # so a compiled forward sees the same graph input every step (a Python float would be a guarded constant).
        # Not part of the state (non-persistent): the method sets it every batch.
        self.register_buffer("s_now", torch.full((), float(smax), device=bn.weight.device), persistent=False)
        self.s = float(smax)

    @property
    def s(self) -> float:
        """Current gate temperature while training (set per batch by the method); evaluation uses ``smax``."""
        return self._s

    @s.setter
    def s(self, value: float) -> None:
        self._s = float(value)  # host copy for the gradient compensation: reading the tensor back would sync
        with torch.no_grad():
            self.s_now.fill_(self._s)

    def gate(self, s: float | None = None) -> torch.Tensor:
        if s is None:
            s = self.s_now if self.training else self.smax
        return torch.sigmoid(s * self.embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gate().view(1, -1, 1, 1)


@dataclass
class ConvMask:
    """Where a conv's output gate and input mask come from (gate names; ``inputs`` are max-ed, empty = image)."""

    conv: str
    out: str
    inputs: tuple[str, ...]


def resnet_topology(backbone: nn.Module) -> list[ConvMask]:
    """Output gate and input-mask sources of every conv of a torchvision ResNet (see module docstring)."""
    convs = resnet_convs(backbone)
    plan = [ConvMask("conv1", "bn1", ())]
    stream: tuple[str, ...] = ("bn1",)
    for block_name in resnet_blocks(backbone):
        own = [n for n in convs if n.startswith(block_name + ".conv")]
        prev = stream
        for conv in own:
            plan.append(ConvMask(conv, bn_after(conv), prev))
            prev = (bn_after(conv),)
        last = bn_after(own[-1])
        ds = f"{block_name}.downsample.0"
        if ds in convs:
            plan.append(ConvMask(ds, bn_after(ds), stream))
            stream = (last, bn_after(ds))
        else:
            stream = (last, *stream)
    return plan


@METHODS.register("hat")
class Hat(Method[HatConfig]):
    """Per-unit task gates over shared, gradient-masked conv weights (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = HatConfig
    families: ClassVar[tuple[str, ...]] = ("resnet",)
    composable: ClassVar[bool] = False
    isolates_tasks: ClassVar[bool] = False

    def setup(self, model: TaskModel) -> None:
        backbone = model.backbone
        try:
            self.topology = resnet_topology(backbone)
        except (ValueError, AttributeError) as e:
            raise UserError(f"hat on {self.ctx.backbone_name or 'this backbone'}: {e}") from None
        for spec in self.topology:
            set_submodule(backbone, spec.out, GatedBatchNorm(backbone.get_submodule(spec.out), self.cfg.smax))
        self._bn_init = snapshot({**bn_parameters(model), **bn_buffers(model)})
        self._grad_masks: dict[str, torch.Tensor] = {}

    # ---- structure -------------------------------------------------------------------------------------------
    def gates(self, model: TaskModel) -> dict[str, GatedBatchNorm]:
        """Gate modules by name in ``model.backbone`` (the names the topology uses)."""
        return {n: m for n, m in model.backbone.named_modules() if isinstance(m, GatedBatchNorm)}

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        params = {f"backbone.{n}.embedding": g.embedding for n, g in self.gates(model).items()}
        params.update(bn_parameters(model))
        return params

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return bn_buffers(model)

    def shared_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {f"backbone.{s.conv}.{k}": p for s in self.topology for k, p in self._conv(model, s).named_parameters()}

    def shared_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return {f"backbone.{n}.cumulative": g.cumulative for n, g in self.gates(model).items()}

    def _conv(self, model: TaskModel, spec: ConvMask) -> nn.Module:
        return model.backbone.get_submodule(spec.conv)

    # ---- masks ----------------------------------------------------------------------------------------------
    def input_mask(self, gates: dict[str, GatedBatchNorm], spec: ConvMask, in_channels: int) -> torch.Tensor:
        """Cumulative mask of a conv's input channels (ones for the image)."""
        if not spec.inputs:
            return torch.ones(in_channels, device=gates[spec.out].cumulative.device)
        return torch.stack([gates[n].cumulative for n in spec.inputs]).amax(0)

    def weight_grad_masks(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """``1 - min(a_prev[out], a_prev[in])`` per conv weight (and ``1 - a_prev[out]`` per bias), by name."""
        gates = self.gates(model)
        masks: dict[str, torch.Tensor] = {}
        for spec in self.topology:
            conv = self._conv(model, spec)
            out = gates[spec.out].cumulative.view(-1, 1, 1, 1)
            inp = self.input_mask(gates, spec, conv.weight.shape[1]).view(1, -1, 1, 1)
            masks[f"{spec.conv}.weight"] = 1 - torch.minimum(out, inp)
            if getattr(conv, "bias", None) is not None:
                masks[f"{spec.conv}.bias"] = 1 - gates[spec.out].cumulative
        return masks

    # ---- task lifecycle ----------------------------------------------------------------------------------------
    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Fresh N(0, 1) embeddings (nn.Embedding's init in the official code), pretrained BN, current grad masks."""
        gen = torch.Generator().manual_seed(1000 * self.ctx.seed + task_index)
        with torch.no_grad():
            for g in self.gates(model).values():
                g.embedding.copy_(torch.randn(g.embedding.shape, generator=gen))
                g.s = g.smax
        restore({**bn_parameters(model), **bn_buffers(model)}, self._bn_init)
        self._grad_masks = self.weight_grad_masks(model)

    def on_task_end(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Fold this task's gates at ``smax`` into the cumulative masks."""
        with torch.no_grad():
            for g in self.gates(model).values():
                g.cumulative.copy_(torch.maximum(g.cumulative, g.gate(g.smax)))
                g.s = g.smax

    # ---- training-time hooks -------------------------------------------------------------------------------------
    def on_train_batch_start(self, model: TaskModel, batch_idx: int, num_batches: int, epoch: int) -> None:
        smax = self.cfg.smax
        s = (smax - 1 / smax) * batch_idx / max(1, num_batches) + 1 / smax
        for g in self.gates(model).values():
            g.s = s

    def training_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        gates = list(self.gates(model).values())
        a = torch.cat([g.gate() for g in gates])
        if task_index == 0:
            reg = a.sum() / a.numel()
        else:
            free = 1 - torch.cat([g.cumulative for g in gates])
            reg = (a * free).sum() / free.sum().clamp_min(1e-12)
        return loss + self.cfg.c * reg

    def on_after_backward(self, model: TaskModel) -> None:
        cfg = self.cfg
        with torch.no_grad():
            for name, mask in self._grad_masks.items():
                p = model.backbone.get_parameter(name)
                if p.grad is None:
                    continue
                if mask.device != p.grad.device:
                    # Built at task start, before Lightning moves the model: move once and keep it there, not per step.
                    mask = self._grad_masks[name] = mask.to(p.grad.device)
                p.grad.mul_(mask)
            for g in self.gates(model).values():
                e = g.embedding
                if e.grad is None:
                    continue
                # Paper eq. 9: undo the s-dependence of d sigmoid(s e) / d e so embeddings train at a stable speed.
                num = torch.cosh(torch.clamp(g.s * e, -cfg.thres_cosh, cfg.thres_cosh)) + 1
                den = torch.cosh(e) + 1
                e.grad.mul_(cfg.smax / g.s * num / den)

    def on_after_optimizer_step(self, model: TaskModel) -> None:
        with torch.no_grad():
            for g in self.gates(model).values():
                g.embedding.clamp_(-self.cfg.thres_emb, self.cfg.thres_emb)

    # ---- schedule and selection (hat.py Appr.train) ----------------------------------------------------------------
    def lr_scheduler(self, optimizer: torch.optim.Optimizer, tcfg: TrainerConfig) -> dict | None:
        """The official plateau schedule (``schedule=official``); ``None``: the engine's StepLR (``paper``)."""
        cfg = self.cfg
        if cfg.schedule != "official":
            return None
        # The official counter starts at lr_patience, drops on every epoch without a strictly lower val loss and
        # divides the lr when it reaches 0, i.e. on the lr_patience-th bad epoch in a row, then restarts (the best
        # loss is kept). ReduceLROnPlateau divides once more than `patience` bad epochs have passed, with the same
        # resets: patience = lr_patience - 1. threshold 0 makes "better" a strict <; eps 0 never skips a division.
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=1 / cfg.lr_factor, patience=cfg.lr_patience - 1, threshold=0.0, eps=0.0
        )
        # Stepped after each validation (every check_val_every_n_epoch epochs) on the val loss all ranks agree on.
        return {
            "scheduler": sched,
            "interval": "epoch",
            "frequency": int(tcfg.check_val_every_n_epoch),
            "monitor": "val/loss",
            "strict": True,
        }

    def stop_below_lr(self) -> float | None:
        """hat.py: ``if lr < lr_min: break`` right after a division (``official`` only)."""
        return self.cfg.lr_min if self.cfg.schedule == "official" else None

    def selection(self) -> tuple[str, str]:
        """hat.py restores the model of the lowest val loss (``official``); ``paper``: the engine's val accuracy."""
        return ("val/loss", "min") if self.cfg.schedule == "official" else ("val/acc", "max")

    def validation_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """hat.py ``eval`` reports ``criterion``: cross-entropy plus ``lamb`` times the regulariser, gates at ``smax``
        (the model is in eval mode here, so ``training_loss`` computes exactly that)."""
        return self.training_loss(model, task_index, loss, logits, y)

    def load_shared_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        super().load_shared_state(model, state)
        self._grad_masks = self.weight_grad_masks(model)

    def used_fraction(self, model: TaskModel) -> float:
        """Fraction of units some task uses (cumulative gate > 0.5): HAT's capacity usage."""
        cum = torch.cat([g.cumulative for g in self.gates(model).values()])
        return float((cum > 0.5).float().mean())
