"""Measured throughput of a task's training, for results.json's ``timing`` (the cost model and gpu-check read it).

:class:`StepTimer` is a Lightning callback. In every epoch the first :func:`warmup_steps` steps are excluded (loader
refill, the first kernel launches and autotuning, the compile in the first epoch); the remaining steps form one timed
window per epoch, with a device synchronisation only at its two ends:

* end to end (``img_s``): wall time from the end of the last warm-up step to the end of the epoch's last step, so
  it covers loading, the host-to-device copy, the device transforms, forward, backward and the optimiser step;
* device (``img_s_device``): per step, from ``on_train_batch_start`` (the batch is already on the device and its
  transform queued) to ``on_train_batch_end`` (optimiser step done), summed. On CUDA these are pairs of CUDA events,
  read after the window's closing synchronisation: nothing waits for the GPU inside the window. On a CPU they are
  ``perf_counter`` readings. Either way ``img_s_device >= img_s`` up to clock noise.

Fixed costs: ``epoch_fixed_s`` is the mean per epoch of (epoch wall without validation - the epoch's timed images
at the steady end-to-end rate): what an epoch costs beyond its images (loader start, warm-up steps, compilation,
end-of-epoch work). ``val_s`` is the mean validation time per epoch. The task loop adds ``task_fixed_s`` (task wall
minus the epochs: Trainer build, method hooks, state saving, test evaluation) and ``eval_s`` (the test evaluation).

Figures are per process: under DDP each rank times its own shard of the batches, and rank 0's are recorded.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from recast_bench.perf.common import sync

WARMUP_STEPS = 10
"""Steps excluded at the start of every epoch (fewer when an epoch is short: at most half of its steps)."""


def warmup_steps(steps_per_epoch: int) -> int:
    return min(WARMUP_STEPS, max(0, steps_per_epoch // 2))


class StepTimer(L.Callback):
    """Times steady-state training steps and epoch fixed costs (module docstring); :meth:`summary` gives the figures."""

    def __init__(self) -> None:
        self.warmup = 0
        self.timed_steps = 0
        self.timed_images = 0
        self.window_s = 0.0
        self.device_s = 0.0
        self.epochs: list[dict[str, float]] = []  # per epoch: wall (validation included), val_s, timed images
        self._device = torch.device("cpu")
        self._epoch: dict[str, Any] = {}
        self._pairs: list[tuple[Any, Any]] = []

    # ---- clocks ------------------------------------------------------------------------------------------------
    def _mark(self) -> Any:  # noqa: ANN401 (a CUDA event or a float)
        if self._device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _now(self) -> float:
        sync(self._device)
        return time.perf_counter()

    # ---- hooks ---------------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._device = pl_module.device
        n = trainer.num_training_batches
        self.warmup = warmup_steps(int(n) if n != float("inf") else WARMUP_STEPS * 2)
        start = self._now()
        self._epoch = {"start": start, "window_start": start if self.warmup == 0 else None, "val_s": 0.0, "images": 0}
        self._pairs = []

    def on_train_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,  # noqa: ANN401
    ) -> None:
        if batch_idx >= self.warmup:
            self._pairs.append((self._mark(), None))

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,  # noqa: ANN401
    ) -> None:
        if batch_idx >= self.warmup and self._pairs and self._pairs[-1][1] is None:
            self._pairs[-1] = (self._pairs[-1][0], self._mark())
            self._epoch["images"] += len(batch[1])
            self._epoch["window_end"] = batch_idx
        elif batch_idx == self.warmup - 1:
            self._epoch["window_start"] = self._now()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window()  # validation runs at the end of the epoch: the training steps are over
        self._epoch["val_start"] = self._now()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val_start" in self._epoch:
            self._epoch["val_s"] += self._now() - self._epoch.pop("val_start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window()
        wall = self._now() - self._epoch["start"]
        self.epochs.append({"wall_s": wall, "val_s": self._epoch["val_s"], "images": float(self._epoch["images"])})

    def _close_window(self) -> None:
        """End the epoch's timed window once (before validation, or at the epoch's end): one sync, then the events."""
        if self._epoch.get("window_start") is None or "window_s" in self._epoch:
            return
        self._epoch["window_s"] = self._now() - self._epoch["window_start"]
        self.window_s += self._epoch["window_s"]
        done = [(a, b) for a, b in self._pairs if b is not None]
        if self._device.type == "cuda":
            self.device_s += sum(a.elapsed_time(b) for a, b in done) / 1000.0
        else:
            self.device_s += sum(b - a for a, b in done)
        self.timed_steps += len(done)
        self.timed_images += int(self._epoch["images"])
        self._pairs = []

    # ---- figures -------------------------------------------------------------------------------------------------
    @property
    def epochs_wall_s(self) -> float:
        return sum(e["wall_s"] for e in self.epochs)

    def summary(self) -> dict[str, Any] | None:
        """results.json's per-task ``timing`` (without the task loop's ``task_fixed_s`` and ``eval_s``)."""
        if not self.epochs or self.timed_steps == 0 or self.window_s <= 0:
            return None
        img_s = self.timed_images / self.window_s
        fixed = [e["wall_s"] - e["val_s"] - e["images"] / img_s for e in self.epochs]
        return {
            "warmup_steps": self.warmup,
            "timed_steps": self.timed_steps,
            "timed_images": self.timed_images,
            "img_s": img_s,
            "img_s_device": self.timed_images / self.device_s if self.device_s > 0 else None,
            "epoch_fixed_s": sum(fixed) / len(fixed),
            "val_s": sum(e["val_s"] for e in self.epochs) / len(self.epochs),
        }
