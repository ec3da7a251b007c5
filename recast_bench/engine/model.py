"""The task-incremental network: one shared backbone plus one classification head per task."""

from __future__ import annotations

import torch
from torch import nn


def head_key(task_index: int) -> str:
    """Key of task ``task_index``'s head in :attr:`TaskModel.heads` (ModuleDict keys must be strings)."""
    return f"t{task_index}"


def head_prefix(task_index: int) -> str:
    """The prefix of task ``task_index``'s head entries in a saved task state."""
    return f"heads.{head_key(task_index)}."


def split_head(state: dict[str, torch.Tensor], t: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(the method's own state, task t's head)`` of one task's saved tensors (head keys ``heads.<key>.*``)."""
    prefix = head_prefix(t)
    return {k: v for k, v in state.items() if not k.startswith(prefix)}, {
        k: v for k, v in state.items() if k.startswith(prefix)
    }


class TaskModel(nn.Module):
    """A backbone mapping images to ``[B, num_features]`` features, and a head per task.

    ``active_task`` tells task-conditioned modules (HAT gates, per-task BN) which task is running; the engine sets
    it before training or evaluating a task.
    """

    def __init__(self, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.heads = nn.ModuleDict()
        self.active_task = 0

    def add_head(self, task_index: int, num_classes: int) -> nn.Linear:
        head = nn.Linear(self.num_features, num_classes)
        self.heads[head_key(task_index)] = head
        return head

    def forward(self, x: torch.Tensor, task_index: int | None = None) -> torch.Tensor:
        t = self.active_task if task_index is None else task_index
        return self.heads[head_key(t)](self.backbone(x))
