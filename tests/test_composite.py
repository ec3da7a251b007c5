"""RECAST+X composition: each part keeps its own optimiser settings; RECAST's per-task file stays under 1 KB."""

from __future__ import annotations

import pytest
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
    # A few mimicry iterations: these tests check structure and optimiser groups, not reconstruction quality.
    method = build_method(name, {"recast": {"mimic_iters": 5}}, family)
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
    # Each group's base lr (the authors' schedule, set at construction, scales the coefficients' first epoch).
    by_param = {id(p): (g["initial_lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
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


def test_recast_plus_x_values_come_from_the_composites_card():
    """A composite's own settings live on its protocol card (one home), not in its partner's yaml."""
    from recast_bench.config import compose_config

    af = compose_config(["method=[recast,adaptformer]", "method_name=recast+adaptformer"]).method
    assert af.recast.target == "attn"  # the authors' RECAST+AdaptFormer: RECAST on qkv, adapter beside the MLP
    assert af.adaptformer.variant == "paper"
    mlp = compose_config(["method=[recast,adaptformer]", "method_name=recast+adaptformer", "method.recast.target=mlp"])
    assert mlp.method.recast.target == "mlp"  # the command line still wins
    off = compose_config(["method=[recast,adaptformer]", "method_name=recast+adaptformer", "++protocol.card=none"])
    assert off.method.recast.target == "mlp"  # without the card: RECAST's own default
    assert compose_config(["method=[recast]", "method_name=recast"]).method.recast.target == "mlp"  # the paper's MLP
    assert compose_config(["method=[recast,melo]", "method_name=recast+melo"]).method.recast.target == "mlp"
    pb = compose_config(["method=[recast,piggyback]", "method_name=recast+piggyback", "backbone=resnet_tiny"])
    recast = pb.method.recast  # the authors' RECAST+Piggyback script
    assert (recast.optimizer, recast.lr, recast.head_lr, recast.weight_decay) == ("adam", 5e-4, 3e-2, 0.0)


def test_recast_plus_adaptformer_puts_the_adapter_beside_a_plain_mlp(tmp_path):
    from baselines.adaptformer import ParallelAdapterMLP
    from recast_bench.engine.learner import trainable_count

    torch.manual_seed(0)
    bb, spec, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    cfg = {"recast": {"target": "attn", "mimic_iters": 5, "cache": False}}
    method = build_method("recast+adaptformer", cfg, "vit")
    method.ctx = RunContext(backbone_name="vit_tiny", family="vit", cache_dir=str(tmp_path), image_size=spec.image_size)
    method.setup(model)
    method.on_task_start(model, 0, None, None)
    recast, adapter = method.parts
    for block in model.backbone.blocks:
        assert not isinstance(block.attn.qkv, torch.nn.Linear)  # generated by RECAST
        assert isinstance(block.mlp, ParallelAdapterMLP)
        assert isinstance(block.mlp.mlp.fc1, torch.nn.Linear) and isinstance(block.mlp.mlp.fc2, torch.nn.Linear)
    assert trainable_count(method, model) == trainable_count(recast, model) + trainable_count(adapter, model)
    model.add_head(0, 3)
    model.requires_grad_(False)
    params = method.task_parameters(model)
    for p in params.values():
        p.requires_grad_(True)
    x = torch.randn(4, 3, spec.image_size, spec.image_size)
    torch.nn.functional.cross_entropy(model(x, 0), torch.tensor([0, 1, 2, 0])).backward()
    coeffs = [p for n, p in params.items() if n.endswith("coefficients")]
    ups = [p for n, p in params.items() if n.endswith("up.weight")]
    assert coeffs and all(p.grad is not None and p.grad.abs().sum() > 0 for p in coeffs)
    assert ups and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ups)


AUTHORS_RECAST = {"mimic_iters": 5, "optimizer": "adam", "lr": 5e-4, "head_lr": 3e-2, "weight_decay": 0.0}
"""The recast+piggyback card's RECAST settings: the authors' RECAST+Piggyback optimiser."""


def _piggyback_module(tmp_path, piggyback: dict, epochs: int):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    bb, spec, _ = build_backbone("resnet_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    method = build_method("recast+piggyback", {"recast": AUTHORS_RECAST, "piggyback": piggyback}, "resnet")
    method.ctx = RunContext(backbone_name="resnet_tiny", family="resnet", cache_dir=str(tmp_path))
    method.setup(model)
    model.add_head(0, 3)
    tcfg = TrainerConfig(epochs=epochs)
    trainable = LightningLearner(model, method, tcfg, 0, "x").trainable(0)
    return model, method, trainable, TaskModule(model, method, 0, "t", 3, trainable, tcfg).configure_optimizers()


def test_recast_plus_piggyback_runs_the_authors_schedule(tmp_path):
    """Masks x0.1 every 30 epochs, head every 33, coefficients every 33 plus the mask optimiser's 1e-4 every 30."""
    model, method, trainable, conf = _piggyback_module(tmp_path, {}, 100)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR) and sched["interval"] == "epoch"
    coeff = next(p for n, p in trainable.items() if n.endswith("coefficients"))
    mask = next(iter(method.parts[1].task_parameters(model).values()))
    head = next(p for n, p in trainable.items() if n.startswith("heads."))
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for e in range(100):
        # the authors' step_lr: base * 0.1 ** floor((epoch - 1) / decay_every) for 1-based epochs
        assert group_of[id(mask)]["lr"] == pytest.approx(1e-4 * 0.1 ** (e // 30), rel=1e-9)
        assert group_of[id(head)]["lr"] == pytest.approx(3e-2 * 0.1 ** (e // 33), rel=1e-9)
        want = 5e-4 * 0.1 ** (e // 33) + 1e-4 * 0.1 ** (e // 30)
        assert group_of[id(coeff)]["lr"] == pytest.approx(want, rel=1e-9), e
        opt.step()
        sched["scheduler"].step()
    # schedule=engine: the engine's StepLR, as plain Piggyback.
    _, method, _, conf = _piggyback_module(tmp_path, {"schedule": "engine"}, 100)
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert method.lr_scheduler(conf["optimizer"], TrainerConfig()) is None


def test_two_adams_on_one_parameter_equal_one_adam_at_the_summed_lr():
    """Why the coefficients' double stepping (their mask optimiser steps them too) is one group at the summed lr."""
    torch.manual_seed(0)
    grads = [torch.randn(6, dtype=torch.float64) for _ in range(20)]  # float64: equal up to rounding, not 1 ulp
    a = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    start = a.detach().clone()
    first, second = torch.optim.Adam([a], lr=1e-4), torch.optim.Adam([a], lr=5e-4)
    single = torch.optim.Adam([b], lr=6e-4)
    for i, g in enumerate(grads):
        if i == 10:  # a decay of one of them only: the sum follows
            first.param_groups[0]["lr"] = 1e-5
            single.param_groups[0]["lr"] = 5.1e-4
        a.grad, b.grad = g.clone(), g.clone()
        first.step()
        second.step()
        single.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert (a - start).abs().max() > 1e-3  # they moved: the check is not vacuous


def test_plain_piggyback_keeps_the_engines_step_lr(tmp_path):
    from recast_bench.errors import UserError

    torch.manual_seed(0)
    bb, _, _ = build_backbone("resnet_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    method = build_method("piggyback", {}, "resnet")
    method.setup(model)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    assert method.lr_scheduler(opt, TrainerConfig()) is None
    forced = build_method("piggyback", {"piggyback": {"schedule": "authors"}}, "resnet")
    forced.setup(model2 := TaskModel(build_backbone("resnet_tiny", allow_random_init=True)[0], bb.num_features))
    masks = list(forced.task_parameters(model2).values())
    with pytest.raises(UserError, match="schedule=engine"):  # masks and head share the 1e-4 group: no own period
        forced.lr_scheduler(
            torch.optim.Adam([{"params": masks + [torch.nn.Parameter(torch.zeros(1))]}]), TrainerConfig()
        )
    conf = forced.lr_scheduler(torch.optim.Adam([{"params": masks}]), TrainerConfig(epochs=10))
    assert [conf["scheduler"].lr_lambdas[0](e) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])  # 30 -> 3
