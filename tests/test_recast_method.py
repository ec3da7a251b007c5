"""The ``recast`` method's hooks on a real TaskModel: trainable set, resets, isolation, frozen BN, config."""

from __future__ import annotations

import copy

import pytest
import torch

from recast_bench.backbones import build_backbone
from recast_bench.config import TrainerConfig
from recast_bench.engine.build import build_method
from recast_bench.engine.learner import unfreeze_for_task
from recast_bench.engine.method import RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.engine.step import TrainStep, frozen_batchnorms
from recast_bench.errors import UserError
from recast_bench.recast.layers import ReparamLinear
from recast_bench.registry import METHODS, load_all


def _setup(name: str, family: str, tmp_path, overrides=None):
    torch.manual_seed(0)
    backbone = build_backbone(name, allow_random_init=True)[0]
    model = TaskModel(backbone, backbone.num_features)
    # Few mimicry iterations keep the paper variant fast; tests that need an exact start use variant=svd.
    method = build_method("recast", {"recast": {"mimic_iters": 10, **(overrides or {})}}, family)
    method.ctx = RunContext(backbone_name=name, family=family, cache_dir=str(tmp_path))
    original = copy.deepcopy(model)
    method.setup(model)
    return model, method, original


def _freeze_like_engine(model, method, t):
    return unfreeze_for_task(model, method, t)  # the engine's freezing policy


def _train(model, method, t, steps=5, lr=5e-2):
    params = _freeze_like_engine(model, method, t)
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    step = TrainStep(model, method, t, params, TrainerConfig())  # the engine's step (BN policy, hooks)
    g = torch.Generator().manual_seed(t)
    for i in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)
        step.run(opt, x, y, i, steps)
    return params


def test_registered_and_loadable():
    load_all()
    assert "recast" in METHODS
    assert METHODS.get("recast").Config().groups is None  # 2 blocks per group (paper Table 6)


def test_only_coefficients_and_head_get_gradients(tmp_path):
    model, method, _ = _setup("vit_tiny", "vit", tmp_path, {"groups": 2})
    method.on_task_start(model, 0, None, None)
    model.add_head(0, 3)
    params = _freeze_like_engine(model, method, 0)
    model(torch.randn(2, 3, 32, 32), 0).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(params)
    assert all(n.endswith(".coefficients") or n.startswith("heads.") for n in with_grad)
    assert method.no_weight_decay(model) == set(method.task_parameters(model))
    # per-task count: 4 blocks x (fc1, fc2) x n=2 x K=2
    assert sum(p.numel() for p in method.task_parameters(model).values()) == method.per_task_params() == 32
    assert not any(p.requires_grad for p in model.backbone.recast_banks.parameters())


def test_setup_reproduces_backbone_and_tasks_are_isolated(tmp_path):
    model, method, original = _setup("vit_tiny", "vit", tmp_path, {"groups": 2, "variant": "svd"})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = original.backbone(x)
        torch.testing.assert_close(model.backbone(x), ref, atol=1e-4, rtol=1e-4)
    method.on_task_start(model, 0, None, None)
    model.add_head(0, 3)
    _train(model, method, 0)
    state0 = method.task_state(model)
    model.eval()
    with torch.no_grad():
        out0 = model(x, 0)
    method.on_task_start(model, 1, None, None)  # coefficients back to the mimicked values
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), ref, atol=1e-4, rtol=1e-4)
    model.add_head(1, 3)
    _train(model, method, 1)
    model.eval()
    method.load_task_state(model, state0)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0), out0)  # cache refreshed, task 0 restored exactly


def test_resnet_batchnorm_stats_do_not_change_with_bn_frozen(tmp_path):
    model, method, _ = _setup("resnet_tiny", "resnet", tmp_path, {"bn": "frozen"})
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    method.on_task_start(model, 0, None, None)
    model.add_head(0, 3)
    before = {k: v.clone() for k, v in method.task_state(model).items()}
    _train(model, method, 0, steps=3)
    after = {k: v for k, v in model.state_dict().items() if "running_" in k}
    assert stats and all(torch.equal(stats[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], v) for k, v in method.task_state(model).items())  # it did train
    assert method.per_task_params() == 168  # 2 convs x K=2 x (2*2 + 3*3 + 5*5 + 2*2)


def test_config_presets_and_validation():
    cfg = METHODS.get("recast").Config(preset="c24")
    assert (cfg.target, cfg.groups, cfg.templates, cfg.sets) == ("attn", None, 2, 1)
    with pytest.raises(UserError, match="groups must be a positive integer"):
        build_method("recast", {"recast": {"groups": 0}}, "vit")
    with pytest.raises(UserError, match="preset"):
        build_method("recast", {"recast": {"preset": "c1000"}}, "vit")
    with pytest.raises(UserError, match="mimic_loss"):
        build_method("recast", {"recast": {"mimic_loss": "kl"}}, "vit")


def test_bad_grouping_for_backbone_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="must divide the 4 blocks"):
        _setup("vit_tiny", "vit", tmp_path, {"groups": 3})


def test_generated_layers_are_adapter_friendly(tmp_path):
    model, _, _ = _setup("vit_tiny", "vit", tmp_path, {"groups": 2, "target": "attn+mlp"})
    qkv = model.backbone.blocks[0].attn.qkv
    assert isinstance(qkv, ReparamLinear)
    assert qkv.weight.shape == (qkv.out_features, qkv.in_features) == (144, 48)
    assert qkv.bias is not None and qkv.bias.shape == (144,)


def test_resnet_per_task_batchnorm_is_stored_restored_and_reset(tmp_path):
    from recast_bench.recast.method import PACKED_BN_KEY, PACKED_KEY

    model, method, _ = _setup("resnet_tiny", "resnet", tmp_path)  # bn=per_task is the default
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    n_stats = sum(2 * m.num_features for m in bns)
    pretrained = {k: v.clone() for k, v in method.task_buffers(model).items()}
    states, outs = [], []
    x = torch.randn(4, 3, 32, 32)
    for t in range(2):
        method.on_task_start(model, t, None, None)
        assert all(torch.equal(v, pretrained[k]) for k, v in method.task_buffers(model).items())  # reset per task
        model.add_head(t, 3)
        _train(model, method, t, steps=3)
        states.append(method.task_state(model))
        assert states[-1][PACKED_BN_KEY].numel() == n_stats
        assert not torch.equal(states[-1][PACKED_BN_KEY], torch.cat([v.flatten() for v in pretrained.values()]))
        model.eval()
        with torch.no_grad():
            outs.append(model(x, t))
    assert not torch.equal(states[0][PACKED_BN_KEY], states[1][PACKED_BN_KEY])  # statistics differ per task
    # BN affine parameters are frozen, yet the engine keeps these BNs in train mode: the method declared their stats.
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    assert frozen_batchnorms(model, method) == []
    assert len(frozen_batchnorms(model)) == len(bns)  # without the declaration they would be frozen
    method.load_task_state(model, states[0])  # restoring task 0 restores its statistics and outputs exactly
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0), outs[0])
    d = method.describe()
    assert d["bn"] == "per_task" and d["per_task_buffers"] == n_stats and d["per_task_params"] == 168
    assert sum(p.numel() for p in method.task_parameters(model).values()) == 168  # trainable: coefficients only
    assert set(states[0]) == {PACKED_KEY, PACKED_BN_KEY}


def test_variant_selects_the_init_and_row(tmp_path):
    paper = build_method("recast", {"recast": {}}, "vit").cfg
    svd = build_method("recast", {"recast": {"variant": "svd"}}, "vit").cfg
    assert (paper.variant, paper.mimic_config().init, paper.row_name) == ("paper", "random", "RECAST")
    assert (svd.mimic_config().init, svd.row_name) == ("svd", "RECAST, SVD init (ours)")
    assert paper.bn == "per_task" and paper.mimic_loss is None and paper.sets == 2 and paper.lr == 2e-3
    with pytest.raises(UserError, match="variant"):
        build_method("recast", {"recast": {"variant": "exact"}}, "vit")
    with pytest.raises(UserError, match="bn"):
        build_method("recast", {"recast": {"bn": "train"}}, "resnet")


def test_mimicry_runs_on_the_run_device(tmp_path, monkeypatch):
    import recast_bench.recast.method as recast_method

    seen = {}

    def capture(backbone, family, spec, mimic, cache_dir):
        seen["device"] = mimic.device
        raise ValueError("stop")

    monkeypatch.setattr(recast_method, "recast_backbone", capture)
    for device, cuda, expected in (("cuda:1", True, "cuda:1"), ("cuda", False, "cpu"), ("cpu", True, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        method = build_method("recast", {"recast": {}}, "vit")
        method.ctx = RunContext(backbone_name="vit_tiny", family="vit", cache_dir=str(tmp_path), device=device)
        backbone = build_backbone("vit_tiny", allow_random_init=True)[0]
        with pytest.raises(UserError, match="stop"):
            method.setup(TaskModel(backbone, backbone.num_features))
        assert seen["device"] == expected
