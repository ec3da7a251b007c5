"""The one training step: the engine's Lightning module, perf and the tests all train through :class:`TrainStep`.

One step, in the order the engine runs it (``TaskModule`` calls the pieces from Lightning's hooks; :meth:`run`
calls them in plain PyTorch):

1. :meth:`TrainStep.begin_batch`: the engine's BatchNorm policy (:func:`frozen_batchnorms`: BNs with nothing to
   train run in eval mode), the active task, then :meth:`Method.on_train_batch_start`;
2. :meth:`TrainStep.loss`: forward on the task's head, cross-entropy, then :meth:`Method.training_loss`;
3. backward, then :meth:`TrainStep.after_backward` (:meth:`Method.on_after_backward`: HAT's gradient masks);
4. :meth:`TrainStep.clip`: the trainer's ``grad_clip`` as a global norm over every optimised parameter, after the
   gradient hook (what Lightning's ``gradient_clip_val`` does: HAT's official clip also comes after its masks);
5. the optimiser step, then :meth:`TrainStep.after_optimizer_step` (:meth:`Method.on_after_optimizer_step`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from recast_bench.config import TrainerConfig
    from recast_bench.engine.method import Method
    from recast_bench.engine.model import TaskModel


def frozen_batchnorms(model: nn.Module, method: Method | None = None) -> list[nn.Module]:
    """BatchNorm layers none of whose parameters train: they must run in eval mode so their statistics stay fixed.

    Exception: a BN whose running statistics ``method`` stores per task (:meth:`Method.task_buffers`) stays in train
    mode, so they adapt to the task and are saved and restored with it (RECAST's ``bn=per_task``).
    """
    per_task = {id(b) for b in method.task_buffers(model).values()} if method is not None else set()
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in m.parameters())
        and not any(id(b) in per_task for b in m.buffers())
    ]


class TrainStep:
    """One training step of task ``task_index`` for ``model`` under ``method`` (see the module docstring).

    ``trainable`` is what the engine's freezing policy unfroze (``unfreeze_for_task``); it must already be applied,
    because which BatchNorms stay frozen is read from ``requires_grad`` here, once.
    """

    def __init__(
        self,
        model: TaskModel,
        method: Method,
        task_index: int,
        trainable: dict[str, nn.Parameter],
        tcfg: TrainerConfig,
    ) -> None:
        self.model = model
        self.method = method
        self.task_index = task_index
        self.trainable = trainable
        self.tcfg = tcfg
        # BN layers with no trainable parameter keep their running statistics frozen (eval mode): otherwise
        # training task t would silently change the statistics every earlier task is evaluated with.
        self.frozen_bn = frozen_batchnorms(model, method)

    def begin_batch(self, batch_idx: int = 0, num_batches: int = 1, epoch: int = 0) -> None:
        """Before every batch: the frozen BatchNorms back to eval (the module's own mode is its caller's: Lightning
        keeps the one it was given, :meth:`run` sets train), this task's head, the method's per-batch schedule."""
        for m in self.frozen_bn:
            m.eval()
        self.model.active_task = self.task_index
        self.method.on_train_batch_start(self.model, batch_idx, num_batches, epoch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tcfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x, self.task_index)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss to minimise, logits)``: cross-entropy on the task's head plus the method's terms."""
        logits = self.forward(x)
        loss = self.method.training_loss(self.model, self.task_index, F.cross_entropy(logits, y), logits, y)
        return loss, logits

    def after_backward(self) -> None:
        self.method.on_after_backward(self.model)

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """The trainer's ``grad_clip``: one global L2 norm over every parameter ``optimizer`` holds (Lightning's
        ``gradient_clip_val`` with the ``norm`` algorithm, which ``TaskModule`` routes here)."""
        if self.tcfg.grad_clip:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.tcfg.grad_clip)

    def after_optimizer_step(self) -> None:
        self.method.on_after_optimizer_step(self.model)

    def run(
        self,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_idx: int = 0,
        num_batches: int = 1,
    ) -> torch.Tensor:
        """One whole step in plain PyTorch (perf, tests); returns the detached loss (no host sync)."""
        if not self.model.training:
            self.model.train()
        self.begin_batch(batch_idx, num_batches)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loss(x, y)
        loss.backward()
        self.after_backward()
        self.clip(optimizer)
        optimizer.step()
        self.after_optimizer_step()
        return loss.detach()
