"""RECAST grouping and surgery: the paper's per-task counts, the authors' ResNet scheme, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recast_bench.backbones import build_backbone
from recast_bench.recast.layers import ReparamConv2d, ReparamLinear
from recast_bench.recast.surgery import RecastSpec, apply_plan, make_plan, reparam_modules


@pytest.fixture(scope="module")
def vit_small():
    torch.manual_seed(0)
    return build_backbone("vit_small", allow_random_init=True)[0]


@pytest.mark.parametrize(("target", "expected"), [("mlp", 96), ("attn", 48), ("attn+mlp", 144)])
def test_vit_small_per_task_counts_match_paper(vit_small, target, expected):
    plan = make_plan(vit_small, "vit", RecastSpec(groups=6, templates=2, sets=2, target=target))
    assert plan.per_task_params() == expected
    # sum_l M_l * n * K, with M_l the templated modules per block
    modules_per_block = {"mlp": 2, "attn": 1, "attn+mlp": 3}[target]
    assert plan.per_task_params() == 12 * modules_per_block * 2 * 2


def test_default_spec_is_paper_table6_on_vit_small(vit_small):
    plan = make_plan(vit_small, "vit", RecastSpec())
    assert plan.spec["groups"] == 6 and plan.per_task_params() == 96


def test_vit_grouping_and_per_type_banks(vit_small):
    plan = make_plan(vit_small, "vit", RecastSpec(groups=6, templates=2, sets=2, target="mlp+proj"))
    keys = [b.key for b in plan.banks]
    assert len(keys) == 18 and "fc1_g0" in keys and "fc2_g5" in keys and "proj_g3" in keys
    fc1_g1 = next(b for b in plan.banks if b.key == "fc1_g1")
    assert fc1_g1.modules == ["blocks.2.mlp.fc1", "blocks.3.mlp.fc1"]  # g = floor(l / (L / G))
    assert fc1_g1.weight_shape == (1536, 384)
    assert next(b for b in plan.banks if b.key == "fc2_g1").weight_shape == (384, 1536)


@pytest.mark.parametrize(
    ("sharing", "groups", "n", "count"), [("low", 6, 2, 48), ("balanced", 3, 4, 96), ("extreme", 1, 12, 288)]
)
def test_sharing_schemes_of_figure_6a(vit_small, sharing, groups, n, count):
    plan = make_plan(vit_small, "vit", RecastSpec(sharing=sharing, sets=1, target="mlp"))
    assert (plan.spec["groups"], plan.spec["templates"]) == (groups, n)
    assert plan.per_task_params() == count


def test_resnet_authors_scheme():
    net = build_backbone("resnet_tiny", allow_random_init=True)[0]
    plan = make_plan(net, "resnet", RecastSpec(sets=2))
    n_per_stage = {b.key: b.num_templates for b in plan.banks if b.kind == "conv1"}
    assert n_per_stage == {"layer1_conv1": 2, "layer2_conv1": 3, "layer3_conv1": 5, "layer4_conv1": 2}
    assert all("layer1.0." not in m and ".0.conv" not in m for m in plan.modules())  # block 0 stays plain
    assert plan.per_task_params() == 2 * 2 * (2 * 2 + 3 * 3 + 5 * 5 + 2 * 2)  # 2 convs * K * sum(M_s * n_s)
    apply_plan(net, plan)
    assert isinstance(net.layer3.get_submodule("4").conv2, ReparamConv2d)
    assert isinstance(net.layer3.get_submodule("0").conv1, nn.Conv2d)
    assert isinstance(net.layer2.get_submodule("0").downsample[0], nn.Conv2d)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64)


def test_apply_plan_registers_banks_once_and_keeps_biases():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", allow_random_init=True)[0]
    bias = vit.blocks[1].mlp.fc1.bias.detach().clone()
    plan = make_plan(vit, "vit", RecastSpec(groups=2, templates=2, sets=2, target="attn+mlp"))
    apply_plan(vit, plan)
    names = [n for n, _ in vit.named_parameters()]
    assert sum(n.endswith("templates") for n in names) == 6  # 3 kinds x 2 groups, each registered once
    fc1 = vit.blocks[1].mlp.fc1
    assert isinstance(fc1, ReparamLinear) and torch.equal(fc1.bias.detach(), bias)
    assert len(reparam_modules(vit)) == 12
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 48)
    with pytest.raises(ValueError, match="already"):
        apply_plan(vit, plan)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": 0}, "groups must be a positive integer"),
        ({"templates": -1}, "templates must be a positive integer"),
        ({"sets": 0}, "sets must be a positive integer"),
        ({"target": "ffn"}, "unknown recast target"),
        ({"sharing": "medium"}, "sharing must be one of"),
        ({"resnet_target": "conv3"}, "resnet_target"),
        ({"resnet_templates": 0}, "resnet_templates"),
    ],
)
def test_bad_specs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecastSpec(**kwargs)


def test_groups_must_divide_depth():
    vit = build_backbone("vit_tiny", allow_random_init=True)[0]
    with pytest.raises(ValueError, match=r"groups=3 must divide the 4 blocks; choose one of \[1, 2, 4\]"):
        make_plan(vit, "vit", RecastSpec(groups=3))
    with pytest.raises(ValueError, match="families"):
        make_plan(vit, "mlp-mixer", RecastSpec())
    with pytest.raises(ValueError, match="ResNet stage"):
        make_plan(vit, "resnet", RecastSpec())
