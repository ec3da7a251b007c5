"""Test-time evaluation: top-1 accuracy and per-image predictions of one task under its restored state.

Arg-max predictions, labels and the correct and total counts stay on the model's device until the end (one transfer
per evaluation). Under DDP each rank evaluates a disjoint shard of the test set; the counts are summed with one
all-reduce of a device tensor and the predictions gathered the same way, so the collectives work over NCCL (a
torchmetrics metric built on the CPU would all-gather CPU tensors, which NCCL refuses). Micro top-1 accuracy equals
torchmetrics' ``MulticlassAccuracy(average="micro")``: both take the first arg-max of the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EvalSetup:
    """How a task is evaluated: ``precision`` autocasts as training did (``bf16-mixed``); ``sharded``: the loader
    holds this rank's shard (:func:`shard_for_rank`) and results are combined over the process group;
    ``transform(batch, False)`` finishes each batch on the device (uint8 images: data/device_transforms.py)."""

    device: torch.device
    precision: str | None = None
    channels_last: bool = False
    sharded: bool = False
    transform: Callable | None = None


@dataclass
class Predictions:
    """One task's evaluation: top-1 accuracy (%) and every test image's arg-max class and label (CPU int64, test-set
    order; under DDP gathered from all ranks)."""

    acc: float
    pred: torch.Tensor
    label: torch.Tensor


@torch.inference_mode()
def predict(model: TaskModel, task_index: int, loader: DataLoader, num_classes: int, setup: EvalSetup) -> Predictions:
    """Evaluate ``model`` with head ``task_index`` over ``loader``: arg-max and labels stay on the device until one
    transfer at the end (no per-batch host sync)."""
    device = torch.device(setup.device)
    was_training = model.training
    model.eval()
    model.active_task = task_index
    preds, labels = [], []
    with autocast(device, setup.precision):
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if setup.transform is not None:
                x = setup.transform(x, False)
            if setup.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x, task_index)
            if logits.shape[-1] != num_classes:
                raise ValueError(f"head {task_index} gives {logits.shape[-1]} logits, expected {num_classes}")
            preds.append(logits.argmax(dim=-1))
            labels.append(torch.as_tensor(y).to(device, non_blocking=True))
    model.train(was_training)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    pred = torch.cat(preds).long() if preds else empty
    label = torch.cat(labels).long() if labels else empty
    counts = torch.stack([(pred == label).sum(), torch.tensor(label.numel(), device=device)])
    if setup.sharded:
        dist.all_reduce(counts)
        pred, label = _gather_shards(pred), _gather_shards(label)
    correct, total = (int(v) for v in counts.tolist())
    return Predictions(100.0 * correct / total if total else 0.0, pred.cpu(), label.cpu())


def _gather_shards(local: torch.Tensor) -> torch.Tensor:
    """Reassemble the strided shards of :func:`shard_for_rank` (rank r holds items r, r + world, ...) in order."""
    rank, world = _world()
    n = torch.tensor([local.numel()], device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty(sum(int(s) for s in sizes), dtype=local.dtype, device=local.device)
    for r, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        out[r::world] = part[: int(size)]
    return out


def accuracy(
    model: TaskModel, task_index: int, loader: DataLoader, num_classes: int, setup: EvalSetup | None = None
) -> float:
    """Micro-averaged top-1 accuracy in percent of ``model`` with head ``task_index`` over ``loader`` (:func:`predict`;
    ``setup``: on the CPU in full precision when omitted)."""
    return predict(model, task_index, loader, num_classes, setup or EvalSetup(torch.device("cpu"))).acc
