"""Test-time evaluation: top-1 accuracy of one task under its restored state, counted on the model's device.

Correct and total counts stay on the device until the end (one host sync per evaluation). Under DDP each rank
evaluates a disjoint shard of the test set and the counts are summed with one all-reduce of a device tensor, so the
collective works over NCCL (a torchmetrics metric built on the CPU would all-gather CPU tensors, which NCCL
refuses). Micro top-1 accuracy equals torchmetrics' ``MulticlassAccuracy(average="micro")``: both take the first
arg-max of the logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from recast_bench.engine.device import autocast
from recast_bench.engine.model import TaskModel


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_for_rank(ds: Dataset) -> tuple[Dataset, bool]:
    """This rank's strided share of ``ds`` and whether it is one (only under an initialised process group)."""
    rank, world = _world()
    if world == 1:
        return ds, False
    return Subset(ds, range(rank, len(ds), world)), True  # type: ignore[arg-type]


@torch.inference_mode()
def accuracy(
    model: TaskModel,
    task_index: int,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    precision: str | None = None,
    channels_last: bool = False,
    sharded: bool = False,
    transform=None,  # noqa: ANN001
) -> float:
    """Micro-averaged top-1 accuracy in percent of ``model`` with head ``task_index`` over ``loader``.

    ``precision`` autocasts as training did (``bf16-mixed``); ``sharded``: ``loader`` holds this rank's shard and
    the counts are summed over the process group; ``transform(batch, False)`` finishes each batch on the device.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    model.active_task = task_index
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    with autocast(device, precision):
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if transform is not None:  # uint8 images finished on the device (data/device_transforms.py)
                x = transform(x, False)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x, task_index)
            if logits.shape[-1] != num_classes:
                raise ValueError(f"head {task_index} gives {logits.shape[-1]} logits, expected {num_classes}")
            y = y.to(device, non_blocking=True)
            counts[0] += (logits.argmax(dim=-1) == y).sum()
            counts[1] += y.numel()
    model.train(was_training)
    if sharded:
        dist.all_reduce(counts)
    correct, total = (int(v) for v in counts.tolist())
    return 100.0 * correct / total if total else 0.0
