"""The method contract: a small set of hooks the engine calls, and the generic RECAST+X composition.

A method owns three decisions and nothing else:

* surgery on the backbone, once, before the first task (:meth:`Method.setup`);
* which parameters and buffers are *task-specific* (:meth:`Method.task_parameters`, :meth:`Method.task_buffers`)
  or *shared but trained* (:meth:`Method.shared_parameters`, e.g. fine-tuning);
* optional training-time extras (regularisers, gradient masks, schedules) through the hooks below, including its own
  lr schedule, early stop and selection metric where its official code differs from the engine's (HAT).

The engine owns freezing (everything not returned above is frozen), heads, optimisation, model selection,
saving exactly :meth:`Method.task_state` per task and restoring it to evaluate that task.

Call order (the one place it is written; ``engine/loop.py``, ``engine/learner.py`` and ``engine/step.py`` follow it):

* once per run: ``ctx`` is set, then :meth:`Method.setup`; then :meth:`Method.make_learner` (``None``: the engine's
  learner, which calls everything below; a method with its own learner, Avalanche, is called by that learner);
  :meth:`Method.selection` is recorded in results.json.
* on resume, per completed task: :meth:`Method.load_shared_state` (the state after the last completed task), then
  :meth:`Method.load_task_state` for every completed task.
* per task ``t``:

  1. :meth:`Method.on_task_start` (its data-driven init), then the head is added and the freezing policy unfreezes
     :meth:`Method.task_parameters`, :meth:`Method.shared_parameters` and the head; BatchNorms with nothing
     trainable run in eval mode except those in :meth:`Method.task_buffers`;
  2. the optimiser from :meth:`Method.param_hparams` (and :meth:`Method.no_weight_decay`), the schedule from
     :meth:`Method.lr_scheduler` (``None``: the engine's StepLR);
  3. every training step (``engine/step.py``): :meth:`Method.on_train_batch_start`, forward,
     :meth:`Method.training_loss`, backward, :meth:`Method.on_after_backward`, the trainer's gradient clip, the
     optimiser step, :meth:`Method.on_after_optimizer_step`;
  4. after every validation: the batches' :meth:`Method.validation_loss`, then the epoch is offered to
     :meth:`Method.selection`, which snapshots :meth:`Method.task_state` (and :meth:`Method.shared_state` for a
     method that does not isolate tasks); after the scheduler steps, :meth:`Method.stop_below_lr` may end the task;
  5. the selected epoch's snapshot is restored (:meth:`Method.load_task_state`, :meth:`Method.load_shared_state`),
     *then* :meth:`Method.on_task_end` runs, on the restored parameters (HAT folds the selected epoch's gates into
     its cumulative masks; InfLoRA updates its subspace), with every parameter frozen;
  6. :meth:`Method.task_state` is kept and saved, :meth:`Method.count_task_params` recorded, and
     :meth:`Method.shared_state` saved beside it;
  7. every task seen so far is evaluated under its own :meth:`Method.load_task_state`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from recast_bench.errors import UserError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.config import TrainerConfig
    from recast_bench.data.stream import Task
    from recast_bench.engine.learner import Learner
    from recast_bench.engine.model import TaskModel


@dataclass
class MethodConfig:
    """Optimisation defaults shared by every method; a method's own dataclass subclasses this."""

    lr: float = 2e-3
    """Paper section 3: AdamW with 2e-3 to 5e-3 for RECAST, MeLo, AdaptFormer, RoSA, DoRA."""
    weight_decay: float = 1e-6
    """Paper section 3: 1e-6."""
    optimizer: str = "adamw"
    """``adamw``, ``adam`` or ``sgd`` (HAT uses plain SGD)."""
    momentum: float = 0.0
    """Only for ``sgd``."""
    head_lr: float | None = None
    """Learning rate of the task head; ``None`` uses ``lr``."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer must be adamw, adam or sgd, got {self.optimizer!r}")


@dataclass
class RunContext:
    """What a method may need to know about the run beyond its own config."""

    backbone_name: str = ""
    family: str = ""
    """``vit`` or ``resnet``."""
    weights_path: str | None = None
    """The local pretrained weight file the backbone was loaded from (``None``: random init)."""
    cache_dir: str = "data/cache"
    """Where expensive, reusable artifacts go (e.g. Neural Mimicry results, keyed by hash)."""
    out_dir: str | None = None
    seed: int = 0
    image_size: int = 224
    device: str = "cpu"


CfgT = TypeVar("CfgT", bound=MethodConfig)


class Method(Generic[CfgT]):
    """Base class of every method. Subclasses override only the hooks they need; ``Method[XConfig]`` types ``cfg``.

    The registry gives the name (``@METHODS.register("x")`` sets ``name``), so a class never writes it twice.
    """

    name: ClassVar[str] = ""
    """Set by ``METHODS.register`` (a composite's is ``recast+x``, set per instance)."""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    families: ClassVar[tuple[str, ...]] = ("vit", "resnet")
    """Backbone families the method supports (``vit``, ``resnet``)."""
    composable: ClassVar[bool] = False
    """True when ``recast+<name>`` is meaningful: the method adapts whatever weights the layers produce."""
    isolates_tasks: ClassVar[bool] = True
    """True when training task t leaves every earlier task's outputs bit-for-bit unchanged."""
    runner: ClassVar[str] = "lightning"
    """``lightning`` (our engine) or ``avalanche`` (the method supplies its own learner)."""
    frozen_backbone_features: ClassVar[bool] = False
    """True when nothing before the head trains or adapts (``linear``): the engine then trains the head on backbone
    features computed once per backbone for both flips (``engine/features.py``), not on images."""

    def __init__(self, cfg: CfgT) -> None:
        self.cfg: CfgT = cfg
        self.ctx = RunContext()
        """Set by the engine before :meth:`setup`."""

    # ---- structure -------------------------------------------------------------------------------------------
    def setup(self, model: TaskModel) -> None:
        """Modify ``model.backbone`` once, before the first task (replace layers, insert adapters)."""

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        """Backbone parameters trained for, and stored with, the current task (qualified names in ``model``)."""
        return {}

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """Untrained per-task state stored with the task (masks, BN statistics)."""
        return {}

    def shared_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        """Backbone parameters trained across tasks and not isolated (fine-tuning)."""
        return {}

    def shared_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """Buffers that change across tasks and must be saved to resume (e.g. fine-tuned BN statistics)."""
        return {}

    def no_weight_decay(self, model: TaskModel) -> set[str]:
        """Names of trained parameters that must not be weight-decayed (RECAST coefficients)."""
        return set()

    def param_hparams(self, model: TaskModel) -> dict[str, tuple[float, float]]:
        """``name -> (lr, weight_decay)`` for every parameter this method trains (its own config's values)."""
        no_decay = self.no_weight_decay(model)
        names = {**self.task_parameters(model), **self.shared_parameters(model)}
        return {n: (self.cfg.lr, 0.0 if n in no_decay else self.cfg.weight_decay) for n in names}

    def count_task_params(self, model: TaskModel) -> int:
        """Per-task learnt backbone numbers, head excluded (results.json's ``trainable_params_per_task``): every
        entry of the task and shared parameters; a method whose stored tensors hold pruned or fixed entries counts
        only the learnt ones (LoRA's pruned ranks)."""
        return _numel(self.task_parameters(model)) + _numel(self.shared_parameters(model))

    # ---- task lifecycle ----------------------------------------------------------------------------------------
    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Reset or initialise this task's parameters. ``train_loader`` allows data-driven init (RoSA, InfLoRA)."""

    def on_task_end(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        """Consolidate after training (e.g. InfLoRA's subspace update, HAT's cumulative mask)."""

    # ---- training-time hooks -------------------------------------------------------------------------------------
    def on_train_batch_start(self, model: TaskModel, batch_idx: int, num_batches: int, epoch: int) -> None:
        """Per-batch schedules (HAT's annealed gate temperature)."""

    def training_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Return the loss to minimise; add regularisers here."""
        return loss

    def on_after_backward(self, model: TaskModel) -> None:
        """Gradient surgery (HAT's masks and compensation)."""

    def on_after_optimizer_step(self, model: TaskModel) -> None:
        """Post-step projections or clamps."""

    # ---- schedule and model selection ------------------------------------------------------------------------------
    def lr_scheduler(self, optimizer: torch.optim.Optimizer, tcfg: TrainerConfig) -> dict | None:
        """A Lightning lr-scheduler config (``{"scheduler": ..., "interval": ..., "monitor": ...}``) that replaces the
        engine's StepLR for this method, or ``None`` for the engine's (paper section 3)."""
        return None

    def stop_below_lr(self) -> float | None:
        """A task's training stops once every parameter group's lr is below this (HAT's ``lr_min``); ``None``: never."""
        return None

    def selection(self) -> tuple[str, str]:
        """The validation metric that selects a task's epoch and its direction: ``("val/acc", "max")`` (the engine's
        default) or ``("val/loss", "min")``; ``("none", "last")`` for runners that keep the last epoch (avalanche)."""
        return ("val/acc", "max")

    def validation_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The per-batch validation loss (``loss``: the batch's mean cross-entropy); add terms that the method's
        official evaluation counts (HAT's regulariser)."""
        return loss

    # ---- state -------------------------------------------------------------------------------------------------
    def task_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        """Everything needed to restore this task's backbone behaviour (heads are saved by the engine)."""
        state = {k: v.detach() for k, v in self.task_parameters(model).items()}
        state.update({k: v.detach() for k, v in self.task_buffers(model).items()})
        return {k: v.clone().contiguous() for k, v in state.items()}

    def load_task_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`task_state`."""
        assign_state(model, state)

    def shared_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        state = {k: v.detach() for k, v in self.shared_parameters(model).items()}
        state.update({k: v.detach() for k, v in self.shared_buffers(model).items()})
        return {k: v.clone().contiguous() for k, v in state.items()}

    def load_shared_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        assign_state(model, state)

    def make_learner(
        self, model: TaskModel, tasks: list[Task], tcfg: TrainerConfig, seed: int, fingerprint: str
    ) -> Learner | None:
        """A learner of the method's own (``runner = "avalanche"``), which then runs every task in place of the
        engine's; ``None``: the engine's ``LightningLearner`` and the hooks above."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def assign_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` by qualified name; unknown names or shape mismatches raise ``ValueError``."""
    current = dict(model.named_parameters())
    current.update(dict(model.named_buffers()))
    unknown = sorted(set(state) - set(current))
    if unknown:
        raise ValueError(f"state has {len(unknown)} entries this model lacks, e.g. {unknown[0]!r}")
    with torch.no_grad():
        for k, v in state.items():
            dst = current[k]
            if dst.shape != v.shape:
                raise ValueError(f"state entry {k!r} has shape {tuple(v.shape)}, model expects {tuple(dst.shape)}")
            dst.copy_(v)


ADAM_FAMILY = ("adam", "adamw")


def check_one_optimizer(parts: list[Method]) -> None:
    """``recast+X`` trains with one optimiser, of the first part's type (RECAST's: the authors' notebooks train all
    parameters with one AdamW; their RECAST+Piggyback script with one Adam); each part keeps its own lr and weight
    decay per parameter group (:meth:`Method.param_hparams`), the head RECAST's ``head_lr``.

    A later part whose recorded ``optimizer`` differs must therefore train exactly as if it had its own: Adam and
    AdamW make the same update on a group without weight decay (recast+clr: CLR's official Adam at lr 1e-3, weight
    decay 0, runs bit-for-bit as AdamW would). Anything else would record one optimiser and run another: refused.
    """
    first = parts[0].cfg
    for p in parts[1:]:
        c = p.cfg
        if c.optimizer == first.optimizer:
            continue
        if {c.optimizer, first.optimizer} <= set(ADAM_FAMILY) and c.weight_decay == 0:
            continue
        raise UserError(
            f"{'+'.join(q.name for q in parts)} trains with one {first.optimizer} optimiser (the first part's), but "
            f"method.{p.name}.optimizer is {c.optimizer} (weight_decay {c.weight_decay}), which would not run as "
            f"recorded; set method.{p.name}.optimizer={first.optimizer}"
        )


def _numel(params: dict[str, torch.Tensor]) -> int:
    return int(sum(p.numel() for p in params.values()))


def merge_dicts(dicts: Iterable[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        out.update(d)
    return out


class CompositeMethod(Method[MethodConfig]):
    """``recast+X``: RECAST re-generates its target layers and X adapts the network; both train per task.

    Setup runs in order (RECAST surgery first); state and hooks are the union of both. X reads its base layer's
    ``weight`` at forward time, so X acts on ``W_recast`` exactly when X's layers are among RECAST's targets:

    * ResNet (RECAST on block convs): Piggyback masks the generated weight (``W_recast * M``) and CLR reprograms
      ``conv(x, W_recast)``; on the plain stem, block-0 and downsample convs they act on pretrained weights.
    * ViT, RECAST ``target=mlp`` (paper default): LoRA, MeLo, DoRA, InfLoRA and RoSA-full adapt the *plain* qkv, i.e.
      beside RECAST, not on ``W_recast`` (as the authors' RECAST+MeLo). RoSA sparse-MLP adds its sparse delta to the
      generated fc1/fc2. With ``target=attn`` the qkv adapters act on the generated qkv.
    * AdaptFormer never touches a weight: its adapter runs beside the MLP. ``recast+adaptformer`` uses RECAST
      ``target=attn`` (set in conf/method/adaptformer.yaml, the authors' setting), so the adapter sits beside a
      plain MLP.
    """

    def __init__(self, parts: list[Method]) -> None:
        check_one_optimizer(parts)
        super().__init__(parts[0].cfg)
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.families = tuple(f for f in parts[0].families if all(f in p.families for p in parts))
        self.isolates_tasks = all(p.isolates_tasks for p in parts)
        self._keys: list[set[str]] | None = None

    def setup(self, model: TaskModel) -> None:
        self._keys = None
        for p in self.parts:
            p.ctx = self.ctx
            p.setup(model)

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return merge_dicts(p.task_parameters(model) for p in self.parts)

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return merge_dicts(p.task_buffers(model) for p in self.parts)

    def shared_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return merge_dicts(p.shared_parameters(model) for p in self.parts)

    def shared_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return merge_dicts(p.shared_buffers(model) for p in self.parts)

    def no_weight_decay(self, model: TaskModel) -> set[str]:
        return set().union(*(p.no_weight_decay(model) for p in self.parts))

    def param_hparams(self, model: TaskModel) -> dict[str, tuple[float, float]]:
        # Each part keeps its own paper settings (e.g. Piggyback's masks at 1e-4 beside RECAST's coefficients at 2e-3).
        return merge_dicts(p.param_hparams(model) for p in self.parts)

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for p in self.parts:
            p.on_task_start(model, task_index, task, train_loader)

    def on_task_end(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for p in self.parts:
            p.on_task_end(model, task_index, task, train_loader)

    def on_train_batch_start(self, model: TaskModel, batch_idx: int, num_batches: int, epoch: int) -> None:
        for p in self.parts:
            p.on_train_batch_start(model, batch_idx, num_batches, epoch)

    def training_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        for p in self.parts:
            loss = p.training_loss(model, task_index, loss, logits, y)
        return loss

    def on_after_backward(self, model: TaskModel) -> None:
        for p in self.parts:
            p.on_after_backward(model)

    def on_after_optimizer_step(self, model: TaskModel) -> None:
        for p in self.parts:
            p.on_after_optimizer_step(model)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, tcfg: TrainerConfig) -> dict | None:
        """The first part's own schedule (recast+piggyback: the authors' mask and coefficient steps, set by Piggyback,
        which sees every group); ``None`` when no part has one: the engine's StepLR."""
        for p in self.parts:
            own = p.lr_scheduler(optimizer, tcfg)
            if own is not None:
                return own
        return None

    # stop_below_lr and selection stay the engine's: no composable part has its own (HAT is not composable).

    def validation_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        for p in self.parts:
            loss = p.validation_loss(model, task_index, loss, logits, y)
        return loss

    def task_state(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return merge_dicts(self._part_states(model))

    def _part_states(self, model: TaskModel) -> list[dict[str, torch.Tensor]]:
        """Each part's task state, with a buffer that an earlier part already stores left out: recast+clr's BatchNorm
        running statistics are RECAST's (``bn=per_task``, packed) and CLR's (per tensor); stored, counted in
        ``bytes_per_task`` and restored once, by the first part (about 68 KB per task on ResNet-34)."""
        stored: set[int] = set()
        states = []
        for p in self.parts:
            buffers = p.task_buffers(model)
            again = {k for k, b in buffers.items() if id(b) in stored}
            stored |= {id(b) for b in buffers.values()}
            states.append({k: v for k, v in p.task_state(model).items() if k not in again})
        return states

    def _part_keys(self, model: TaskModel) -> list[set[str]]:
        # Which state keys belong to which part depends only on the model's structure (fixed after setup), so it is
        # computed once instead of building every part's whole state (e.g. millions of packed mask bits) per load.
        if self._keys is None:
            self._keys = [set(s) for s in self._part_states(model)]
        return self._keys

    def load_task_state(self, model: TaskModel, state: dict[str, torch.Tensor]) -> None:
        for p, own in zip(self.parts, self._part_keys(model), strict=True):
            p.load_task_state(model, {k: v for k, v in state.items() if k in own})

    def count_task_params(self, model: TaskModel) -> int:
        return sum(p.count_task_params(model) for p in self.parts)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "parts": [p.describe() for p in self.parts]}
