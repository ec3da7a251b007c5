"""Models for the perf figures, built the way the engine builds them (so the timings are the engine's).

A method's model is a :class:`TaskModel` over a copy of one seeded backbone, with ``method.setup`` run under a
context like the engine's; trainable parameters and optimizer groups follow ``LightningLearner.trainable`` and
``TaskModule.configure_optimizers`` (everything frozen, then the method's task/shared parameters and the head), and
a step is the engine's own :class:`~recast_bench.engine.step.TrainStep`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from recast_bench.engine.learner import unfreeze_for_task
from recast_bench.engine.method import Method, RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.engine.module import build_optimizer
from recast_bench.engine.step import TrainStep

PEFT_LORA = "peft_lora_qkv_r1"
"""Name of the PEFT reference in the training-step figure: LoRA rank 1 on timm's fused ``qkv`` (Q, K and V)."""


def seeded_backbone(
    name: str, seed: int, weights_dir: str, weights: str | None = None
) -> tuple[nn.Module, Any, str | None]:
    """``build_backbone`` with the file ``weights``, else local weights when present, else random weights that depend
    on ``seed`` only (the global RNG is left as it was)."""
    from recast_bench.backbones import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(name, weights, weights_dir, allow_random_init=weights is None)


def method_model(
    name: str,
    backbone: nn.Module,
    spec: Any,
    cache_dir: str,
    seed: int,
    overrides: dict[str, dict[str, Any]] | None = None,
    num_classes: int = 10,
) -> tuple[TaskModel, Method]:
    """A copy of ``backbone`` wrapped in a TaskModel, with method ``name`` set up and task 0's head added.

    ``overrides`` maps a method (part) name to config overrides, as ``method.<name>.*`` does on the command line.
    """
    from recast_bench.engine.build import build_method

    method = build_method(name, overrides or {}, spec.family)
    model = TaskModel(copy.deepcopy(backbone), int(backbone.num_features))
    method.ctx = RunContext(
        backbone_name=spec.name, family=spec.family, cache_dir=cache_dir, seed=seed, image_size=spec.image_size
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        method.setup(model)
        model.add_head(0, num_classes)
    return model, method


def peft_lora_model(backbone: nn.Module, num_classes: int = 10) -> tuple[TaskModel, Method]:
    """PEFT's LoRA (rank 1, alpha 1, no dropout) on every ``qkv``; a no-op Method whose task params are LoRA's."""
    from peft import LoraConfig, inject_adapter_in_model

    bb = inject_adapter_in_model(
        LoraConfig(r=1, lora_alpha=1, lora_dropout=0.0, target_modules=["qkv"]), copy.deepcopy(backbone)
    )
    model = TaskModel(bb, int(backbone.num_features))
    model.add_head(0, num_classes)
    return model, _PeftLora(Method.Config())


class _PeftLora(Method):
    name = PEFT_LORA

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if "lora_" in n}


def engine_trainable(model: TaskModel, method: Method, t: int = 0) -> dict[str, nn.Parameter]:
    """The engine's freezing policy (task ``t``'s head must exist)."""
    return unfreeze_for_task(model, method, t)


def engine_optimizer(model: TaskModel, method: Method, trainable: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
    """The engine's optimiser and parameter groups, exactly as a real run builds them."""
    return build_optimizer(model, method, trainable)


def engine_step(model: TaskModel, method: Method, trainable: dict[str, nn.Parameter]) -> TrainStep:
    """The engine's own training step of task 0 (:class:`recast_bench.engine.step.TrainStep`: its BatchNorm policy,
    the method's loss and hooks; the trainer's defaults, so no gradient clip): ``.run(opt, x, y)`` is one step."""
    from recast_bench.config import TrainerConfig

    return TrainStep(model, method, 0, trainable, TrainerConfig())


def count_task_params(model: TaskModel, method: Method) -> int:
    """Per-task trainable numbers, head excluded (the engine's ``trainable_count``)."""
    from recast_bench.engine.learner import trainable_count

    return int(trainable_count(method, model))
