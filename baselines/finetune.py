"""Sequential fine-tuning: the whole backbone trains on each task in turn, with a head per task.

Earlier tasks keep their heads but see the drifted backbone, so this row shows catastrophic forgetting; it is the
lower reference for every continual-learning method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recast_bench.engine.method import Method, MethodConfig
from recast_bench.engine.model import TaskModel
from recast_bench.registry import METHODS


@dataclass
class FinetuneConfig(MethodConfig):
    lr: float = 1e-4
    """Full-network fine-tuning needs a much smaller step than head/adapter training."""
    weight_decay: float = 1e-6
    """RECAST paper section 3: 1e-6."""
    train_bn_stats: bool = True
    """Let BN running statistics follow each new task (they are shared state, saved to resume)."""


@METHODS.register("finetune")
class Finetune(Method[FinetuneConfig]):
    Config = FinetuneConfig
    isolates_tasks = False

    def shared_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {f"backbone.{k}": p for k, p in model.backbone.named_parameters()}

    def shared_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return {f"backbone.{k}": b for k, b in model.backbone.named_buffers()}
