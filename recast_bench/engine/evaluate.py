"""Test-time evaluation with torchmetrics: top-1 accuracy of one task under its restored state."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from recast_bench.engine.model import TaskModel


@torch.inference_mode()
def accuracy(model: TaskModel, task_index: int, loader: DataLoader, num_classes: int, device: torch.device) -> float:
    """Micro-averaged top-1 accuracy in percent of ``model`` with head ``task_index`` over ``loader``."""
    was_training = model.training
    model.eval()
    model.active_task = task_index
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
    for x, y in loader:
        logits = model(x.to(device, non_blocking=True), task_index)
        metric.update(logits, y.to(device))
    model.train(was_training)
    return float(metric.compute().item()) * 100.0
