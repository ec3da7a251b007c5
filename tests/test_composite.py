"""RECAST+X composition: each part keeps its own optimiser settings; RECAST's per-task file stays under 1 KB."""

from __future__ import annotations

import torch

from recast_bench.backbones import build_backbone
from recast_bench.config import TrainerConfig
from recast_bench.engine.build import build_method
from recast_bench.engine.learner import LightningLearner
from recast_bench.engine.method import RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.engine.module import TaskModule


def _setup(name: str, tmp_path, backbone: str = "resnet_tiny", family: str = "resnet"):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    bb, spec, _ = build_backbone(backbone, allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    method = build_method(name, {}, family)
    method.ctx = RunContext(backbone_name=backbone, family=family, cache_dir=str(tmp_path), image_size=spec.image_size)
    method.setup(model)
    return model, method


def test_each_part_keeps_its_own_lr_and_weight_decay(tmp_path):
    model, method = _setup("recast+piggyback", tmp_path)
    recast, piggy = method.parts
    model.add_head(0, 3)
    learner = LightningLearner(model, method, TrainerConfig(epochs=1), 0, "x")
    trainable = learner.trainable(0)
    module = TaskModule(model, method, 0, "t", 3, trainable, TrainerConfig(epochs=1))
    opt = module.configure_optimizers()["optimizer"]
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    coeff = next(p for n, p in trainable.items() if n.endswith("coefficients"))
    mask = next(p for n, p in piggy.task_parameters(model).items())
    assert by_param[id(coeff)] == (recast.cfg.lr, 0.0)  # coefficients: RECAST's lr, never weight-decayed
    assert by_param[id(mask)] == (piggy.cfg.lr, piggy.cfg.weight_decay)
    assert recast.cfg.lr != piggy.cfg.lr
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_recast_coefficient_file_is_tiny_and_round_trips(tmp_path):
    from recast_bench.engine.checkpoint import save_tensors

    model, method = _setup("recast", tmp_path, "vit_small", "vit")
    state = method.task_state(model)
    assert list(state) == ["recast.coefficients"] and state["recast.coefficients"].numel() == 96  # paper: ViT-S MLP
    size = save_tensors(tmp_path / "state.safetensors", state, {"fingerprint": "0123456789abcdef", "task": "cub200"})
    assert size <= 1024, size
    with torch.no_grad():
        for p in method.task_parameters(model).values():
            p.add_(1.0)
    method.load_task_state(model, state)
    assert torch.equal(method.task_state(model)["recast.coefficients"], state["recast.coefficients"])
