"""The uint8 device path for the Avalanche strategies: avalanche moves uint8 squares, the device finishes them.

The engine's fast input path (``recast_bench/data/device_transforms.py``) stores each image as a uint8 square and
finishes a batch where it lands (resize, crop, flip, normalise); a quarter to a third of the bytes cross PCIe and no
float work runs in the loader workers. The float CPU path computes the same maths per sample (equal to 1e-6).

Which strategy runs on which path, and why:

* **EWC, LwF, L2P: uint8, finished on the device.** Every batch they draw comes from the current experience, so one
  task's :class:`~recast_bench.data.device_transforms.BatchTransform` finishes it. :class:`DeviceFinishPlugin`
  finishes ``mbatch[0]`` right after avalanche moved it to the device (``before_training_iteration``), so every
  later use sees the float batch: the forward, LwF's teacher on the same images, L2P's query network. The one
  forward on raw dataset samples, EWC's importance pass after each experience, goes through
  :meth:`~baselines.avalanche_common.MultiHeadNet.forward`, which finishes uint8 input the same way.
* **GDumb, DER++, ER-ACE: float, on the CPU.** They train on batches mixing samples of several tasks (GDumb's
  memory, the replay batches), which avalanche's own loaders collate: the tasks' uint8 squares differ in side
  (CIFAR is stored at its native 32 px, photos at the resize target) and in normalisation, so they cannot form one
  uint8 batch, and the per-task finish would need the batch split by task inside avalanche's loop.
* **Evaluation (every strategy): uint8, on the device.** Accuracy is computed by our own loop, per task.

Flips: drawn on the CPU from a generator seeded by the run seed and task (``flip_seed``), in batch order, as the
engine draws them; the float path draws each sample's flip from its loader worker's RNG. Same distribution, other
draws: the two paths agree exactly only with flips off (tests/test_avalanche_device.py).
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from recast_bench.data.device_transforms import DeviceAugment, flip_seed
from recast_bench.data.stream import Task

DEVICE_PATH_STRATEGIES = ("ewc", "lwf", "l2p")
"""Strategies whose every training batch holds one task's samples (module docstring)."""


def uses_device_path(name: str, tasks: list[Task]) -> bool:
    """Whether strategy ``name`` trains on uint8 batches finished on the device for this stream."""
    return name in DEVICE_PATH_STRATEGIES and all(t.batch_transform is not None for t in tasks)


class DeviceFinishPlugin(SupervisedPlugin):
    """Finishes each uint8 training batch on the device with the current experience's transform and flips.

    Registered first, so the other plugins and the strategy's forward see the finished float batch. ``finish`` is
    also handed to the network (``net.finish``) for forwards avalanche makes on raw samples (EWC's importances).
    """

    def __init__(self, tasks: list[Task], seed: int, net: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.tasks, self.seed, self.net = tasks, seed, net
        self.augment: DeviceAugment | None = None

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        t = int(strategy.experience.current_experience)
        # A fresh generator per experience, seeded as the engine's (a resumed run restarts the experience).
        self.augment = DeviceAugment(self.tasks[t].batch_transform, flip_seed(self.seed, t))
        if self.net is not None:
            self.net.finish = self.finish

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        strategy.mbatch[0] = self.finish(strategy.mbatch[0])

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """A training-split batch of the current experience: uint8 in, normalised float out (float passes)."""
        if x.dtype != torch.uint8 or self.augment is None:
            return x
        return self.augment(x, True)
