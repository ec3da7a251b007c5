"""The one task-incremental LightningModule: trains the current task's head and the method's parameters."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from recast_bench.config import TrainerConfig
from recast_bench.engine.compile import eager
from recast_bench.engine.faults import failpoint
from recast_bench.engine.method import Method
from recast_bench.engine.model import TaskModel
from recast_bench.engine.step import TrainStep
from recast_bench.errors import UserError


class NonFiniteLoss(UserError):
    """Training diverged; the message names the task and the step."""


FINITE_CHECK_EVERY = 50
"""Training steps between host-side checks of the non-finite-loss flag on an accelerator (every step on the CPU,
where reading a scalar costs no device sync). A run that diverges stops at most this many steps later; the
message still names the first bad step."""


def _sync_is_cheap(device: torch.device) -> bool:
    return device.type == "cpu"


def check_labels(y: torch.Tensor, num_classes: int, task_name: str) -> None:
    """A label outside the head's range would silently index garbage (or crash deep in CUDA): name it."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y.max()) if int(y.max()) >= num_classes else int(y.min())
        raise UserError(f"task {task_name!r} has label {bad}, outside 0..{num_classes - 1}; check its dataset")


def lr_step_size(tcfg: TrainerConfig) -> int:
    """The paper decays every 33 of 100 epochs; shorter runs keep the same proportion."""
    if tcfg.scale_lr_steps and tcfg.epochs < 100:
        return max(1, round(tcfg.lr_step_epochs * tcfg.epochs / 100))
    return tcfg.lr_step_epochs


class TaskModule(L.LightningModule):
    """Trains task ``task_index``: cross-entropy on its head plus the method's extra losses and gradient hooks."""

    def __init__(
        self,
        model: TaskModel,
        method: Method,
        task_index: int,
        task_name: str,
        num_classes: int,
        trainable: dict[str, nn.Parameter],
        tcfg: TrainerConfig,
        on_val: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.task_index = task_index
        self.task_name = task_name
        self.trainable = trainable
        self.tcfg = tcfg
        self.on_val = on_val
        """Called after each validation with the epoch and ``{"val/acc": %, "val/loss": mean}`` (model selection)."""
        self.num_classes = num_classes
        # validate_args=False: the labels are checked on the CPU before the transfer (check_labels); torchmetrics' own
        # check calls torch.unique on the device, a host sync on every training and validation step.
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        # Sample-weighted mean over the whole val set; compute() sums weights and totals over DDP ranks.
        self.val_loss = MeanMetric(nan_strategy="disable")  # no per-update NaN check: it would sync the device
        self.step = TrainStep(model, method, task_index, trainable, tcfg)
        """The one training step (engine/step.py); the Lightning hooks below call its pieces in its order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step.forward(x)

    def on_before_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        check_labels(batch[1], self.num_classes, self.task_name)  # still on the CPU here: no device sync
        return batch

    input_transform = None
    """Set by the learner: ``(batch, train) -> model input``, run on the device after the transfer (uint8 images
    resized, flipped and normalised there: ``data/device_transforms.py``; or cached features: ``features.py``)."""

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        if self.input_transform is None:
            return batch
        x, y = batch
        return self.input_transform(x, self.trainer.training), y

    def on_train_batch_start(self, batch: tuple, batch_idx: int) -> None:
        self.step.begin_batch(batch_idx, int(self.trainer.num_training_batches), self.current_epoch)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, y = batch
        failpoint("mid_task")
        loss, logits = self.step.loss(x, y)
        self._note_finite(loss, batch_idx)
        self.train_acc.update(logits.detach(), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    # Device-side record of the first non-finite loss (step, value); read on the host only every FINITE_CHECK_EVERY
    # steps and at epoch end, because each read is a sync that stalls the CUDA queue. Set per instance on first use.
    _bad_step: torch.Tensor | None = None
    _bad_loss: torch.Tensor | None = None

    def _note_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        value = loss.detach().float()
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.int64, device=value.device)
            self._bad_loss = torch.zeros((), device=value.device)
        first = ~torch.isfinite(value) & (self._bad_step < 0)
        self._bad_step = torch.where(first, torch.full_like(self._bad_step, self.global_step), self._bad_step)
        self._bad_loss = torch.where(first, value, self._bad_loss)
        if _sync_is_cheap(value.device) or (batch_idx + 1) % FINITE_CHECK_EVERY == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        if self._bad_step is None or int(self._bad_step) < 0:
            return
        raise NonFiniteLoss(
            f"non-finite loss ({float(self._bad_loss)}) in task {self.task_index} ({self.task_name}) at epoch "
            f"{self.current_epoch}, step {int(self._bad_step)}; lower the learning rate"
        )

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()
        self.log("train/acc", self.train_acc.compute() * 100.0, prog_bar=True)
        self.train_acc.reset()

    def on_after_backward(self) -> None:
        self.step.after_backward()

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:  # noqa: ANN001 (Lightning's signature)
        # Lightning calls this after the closure (backward, on_after_backward) and, under 16-bit AMP, after unscaling;
        # the clip itself is the step's, so a plain-PyTorch step clips exactly the same way.
        self.step.clip(optimizer)

    def optimizer_step(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 (Lightning's signature)
        super().optimizer_step(*args, **kwargs)
        self.step.after_optimizer_step()

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        x, y = batch
        self.model.active_task = self.task_index
        with eager(self.model.backbone):  # engine/compile.py: only training runs compiled
            logits = self(x)
        self.val_acc.update(logits, y)
        loss = self.method.validation_loss(self.model, self.task_index, F.cross_entropy(logits, y), logits, y)
        # One entry per sample (a view): the batch counts by its size. MeanMetric ignores ``weight`` when NaN checks
        # are disabled (torchmetrics 1.9), so the weighting must be in the values.
        self.val_loss.update(loss.detach().float().expand(len(y)))

    def on_validation_epoch_end(self) -> None:
        acc = float(self.val_acc.compute().item()) * 100.0
        loss = float(self.val_loss.compute().item())
        self.val_acc.reset()
        self.val_loss.reset()
        # Both are already reduced over ranks by compute(); sync_dist keeps the logged value identical on every rank
        # (a plateau scheduler steps on the logged val/loss on each rank, and must step alike).
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.log("val/loss", loss, sync_dist=True)
        if self.on_val is not None and not self.trainer.sanity_checking:
            self.on_val(self.current_epoch, {"val/acc": acc, "val/loss": loss})

    def configure_optimizers(self) -> dict:
        opt = build_optimizer(self.model, self.method, self.trainable)
        own = self.method.lr_scheduler(opt, self.tcfg)
        if own is not None:
            return {"optimizer": opt, "lr_scheduler": own}
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step_size(self.tcfg), gamma=self.tcfg.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: torch.optim.lr_scheduler.LRScheduler, metric: object) -> None:
        super().lr_scheduler_step(scheduler, metric)
        # The method's early stop (HAT: once the lr has fallen below lr_min), checked right after the lr changed, so
        # no epoch trains at an lr below it. The monitored metric is the same on every rank: all ranks stop together.
        floor = self.method.stop_below_lr()
        if floor is not None and all(g["lr"] < floor for g in scheduler.optimizer.param_groups):
            self.trainer.should_stop = True


def build_optimizer(model: TaskModel, method: Method, trainable: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
    """The engine's optimiser: one group per (lr, weight decay) from the method's ``param_hparams``."""
    cfg = method.cfg
    hparams = method.param_hparams(model)
    head_lr = cfg.head_lr or cfg.lr
    groups: dict[tuple, list[nn.Parameter]] = {}
    for name, p in trainable.items():
        # Method parameters take their method's (lr, weight decay); the task head takes the first part's.
        lr, wd = hparams.get(name, (head_lr, cfg.weight_decay))
        groups.setdefault((lr, wd), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def count(params: dict[str, torch.Tensor]) -> int:
    return int(sum(p.numel() for p in params.values()))
