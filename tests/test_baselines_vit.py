"""ViT adapter baselines: analytical per-task counts, equivalence with PEFT, and each method's equation."""

from __future__ import annotations

import copy
import functools
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from baselines._vit import QKV_PARTS, part_rows
from baselines.adaptformer import AdaptFormerConfig, ParallelAdapterMLP
from baselines.dora import DoRALinear
from baselines.inflora import InfLoRAQKV, dualgpm_update
from baselines.lora import LoRAConfig, LoRAFactors, LoRALinear
from baselines.rosa import RosaConfig, RosaLinear, SparseDelta
from recast_bench.backbones import build_backbone
from recast_bench.data.stream import Task
from recast_bench.engine.build import build_method
from recast_bench.engine.learner import trainable_count
from recast_bench.engine.method import RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.errors import UserError


@pytest.fixture(scope="module")
def vit_small() -> TaskModel:
    torch.manual_seed(0)
    bb, _, _ = build_backbone("vit_small", allow_random_init=True)
    return TaskModel(bb, bb.num_features).eval()


def _setup(model: TaskModel, name: str, overrides: dict | None = None):  # noqa: ANN202
    model = copy.deepcopy(model)
    method = build_method(name, {name: overrides or {}}, "vit")
    method.ctx = RunContext(backbone_name="test", family="vit", seed=0)
    method.setup(model)
    return model, method


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("melo", {}, 18_432),  # 12 blocks * (Q + V) * (384 + 384) = 8.4e-4 P (Table 2: 8e-4 P)
        ("adaptformer", {}, 13_836),  # paper variant, b=1: 12 * (2*384 + 1 + 384) = 6.3e-4 P (Table 2: 6e-4 P)
        ("adaptformer", {"variant": "authors"}, 23_064),  # the authors' b=2: 12 * (2*384*2 + 2 + 384)
        ("adaptformer", {"bottleneck": 64}, 595_200),  # AdaptFormer's own b=64: 12 * (2*384*64 + 64 + 384)
        ("dora", {}, 41_472),  # Q, K, V: 12 * 3 * (384 + 384 + 384) = 1.88e-3 P (Table 2: 1.9e-3 P)
        ("dora", {"targets": ["q", "v"]}, 27_648),
        ("inflora", {}, 46_080),  # trained B only, rank 5: 12 * 2 * 384 * 5 = 2.09e-3 P (Table 2: 2e-3 P per task)
        ("inflora", {"rank": 10}, 92_160),  # the official rank: twice the paper's budget
        ("rosa", {"variant": "sparse_mlp"}, 120),  # 24 MLP layers * int(1e-5 * 589,824) = 5: < 150 (paper)
        ("lora", {"rank": 1, "targets": ["q", "v"], "shared": True}, 1_536),  # one pair per role for all blocks
    ],
)
def test_analytical_counts_vit_small(vit_small, name, overrides, expected) -> None:
    model, method = _setup(vit_small, name, overrides)
    assert trainable_count(method, model) == expected


def test_rosa_sparse_mlp_is_under_150_and_full_matches_budget(vit_small) -> None:
    model, method = _setup(vit_small, "rosa", {"variant": "full"})
    qkv = model.backbone.blocks[0].attn.qkv
    assert list(qkv.parts) == ["qkv"] and qkv.lora["qkv"].B.shape == (1152, 1)  # fused qkv: one module (official)
    # LoRA r=1 on the fused qkv (384 + 1152) and proj (384 + 384), plus the floored top-k of both (official).
    expected = 12 * (1536 + 768) + 12 * (int(0.0179 * 442_368) + int(0.0179 * 147_456))
    assert trainable_count(method, model) == expected == 154_332
    p_vit_small = sum(p.numel() for p in vit_small.parameters()) + 384 * 1000 + 1000  # with the ImageNet head
    assert abs(expected / p_vit_small - 7e-3) < 1e-4  # Table 2: 7e-3 P (the density is fitted to it)
    model, method = _setup(vit_small, "rosa", {})
    assert RosaConfig().density == 1e-5 and trainable_count(method, model) == 120 < 150


def test_melo_scale_is_lora_vits_integer_alpha_over_r(vit_small) -> None:
    model, _ = _setup(vit_small, "melo")
    assert {m.scale for m in model.modules() if isinstance(m, LoRALinear)} == {4.0}  # alpha 4 // r 1 (authors)
    model, _ = _setup(vit_small, "lora", {"rank": 3, "alpha": 4})
    assert {m.scale for m in model.modules() if isinstance(m, LoRALinear)} == {1.0}  # 4 // 3, not 4 / 3
    with pytest.raises(ValueError, match="alpha // rank is 0"):
        LoRAConfig(rank=8, alpha=4)


def test_adaptformer_variants_and_scale(vit_small) -> None:
    paper, authors = AdaptFormerConfig(), AdaptFormerConfig(variant="authors")
    assert (paper.bottleneck, paper.scale, paper.dropout) == (1, 4.0, 0.1)  # rank 1; authors' 4 // b; official
    assert (authors.bottleneck, authors.scale, authors.dropout) == (2, 2.0, 0.0)  # adapters/RECAST + Adaptformer.py
    model, _ = _setup(vit_small, "adaptformer")
    ad = model.backbone.blocks[0].mlp.adapter
    assert (ad.down.out_features, ad.scale, ad.dropout) == (1, 4.0, 0.1)


def test_lora_pruning_counts_only_unmasked_entries(vit_small) -> None:
    model, method = _setup(vit_small, "lora", {"rank": 2, "density": 0.25, "targets": ["fc1"]})
    facs = [m for m in model.modules() if isinstance(m, LoRAFactors)]
    per_layer = max(1, round(0.25 * 2 * 384)) + max(1, round(0.25 * 1536 * 2))
    assert trainable_count(method, model) == 12 * per_layer
    assert sum(int(f.mask_A.sum() + f.mask_B.sum()) for f in facs) == 12 * per_layer
    method.on_task_start(model, 0, None, None)
    assert all(bool((f.A[f.mask_A == 0] == 0).all()) for f in facs)


@pytest.mark.parametrize(
    "bad", [{"rank": 0}, {"density": 0.0}, {"density": 1.5}, {"targets": ["qkv"]}, {"targets": []}]
)
def test_lora_config_rejects_bad_values(bad) -> None:
    with pytest.raises(ValueError):
        LoRAConfig(**bad)


def test_other_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="bottleneck"):
        AdaptFormerConfig(bottleneck=0)
    with pytest.raises(ValueError, match="variant"):
        RosaConfig(variant="dense")
    with pytest.raises(ValueError, match="custom needs"):
        RosaConfig(variant="custom")


# ---- PEFT equivalence ---------------------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _peft(lin: nn.Linear, r: int, alpha: float, dora: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], lora_dropout=0.0, use_dora=dora)
    return get_peft_model(_Net(copy.deepcopy(lin)), cfg)


@pytest.mark.parametrize("dora", [False, True])
def test_lora_and_dora_match_peft(dora) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    r, alpha = 3, 6.0
    a, b = torch.randn(r, 16), torch.randn(12, r)
    ref = _peft(lin, r, alpha, dora)
    layer = ref.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    ours_base = copy.deepcopy(lin)
    if dora:
        ours = DoRALinear(ours_base, {"all": (0, 12)}, r, alpha / r)
        mag = torch.rand(12) + 0.5
        with torch.no_grad():
            layer.lora_magnitude_vector["default"].weight.copy_(mag)
            ours.magnitude["all"].copy_(mag)
    else:
        ours = LoRALinear(ours_base, {"all": (0, 12)}, {"all": LoRAFactors(r, 16, 12)}, alpha / r)
    with torch.no_grad():
        ours.lora["all"].A.copy_(a)
        ours.lora["all"].B.copy_(b)
    x = torch.randn(5, 7, 16)
    # Same function, different float32 summation order (merged weight vs. separate branch): ~1e-6 relative.
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=2e-5)


# ---- equations on small layers --------------------------------------------------------------------------------
def _qkv(d: int = 6) -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(d, 3 * d)


def test_lora_qv_equation_and_k_rows_unchanged() -> None:
    base = _qkv()
    parts = {p: part_rows(p, 18) for p in ("q", "v")}
    facs = {p: LoRAFactors(2, 6, 6) for p in parts}
    for f in facs.values():
        with torch.no_grad():
            f.A.normal_()
            f.B.normal_()
    layer = LoRALinear(base, parts, facs, scale=0.5)
    x = torch.randn(4, 6)
    y, y0 = layer(x), base(x)
    for p, (a, b) in parts.items():
        expect = y0[:, a:b] + 0.5 * x @ facs[p].A.T @ facs[p].B.T
        torch.testing.assert_close(y[:, a:b], expect, atol=1e-5, rtol=1e-5)
    assert torch.equal(y[:, 6:12], y0[:, 6:12])  # K untouched, bit for bit


def test_melo_adapts_q_and_v_slices_of_timm_qkv_only() -> None:
    bb, spec, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features).eval()
    method = build_method("melo", {}, "vit")
    method.setup(model)
    qkv = model.backbone.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and list(qkv.parts) == ["q", "v"]
    assert qkv.parts == {"q": (0, 48), "v": (96, 144)}
    with torch.no_grad():
        for f in qkv.lora.values():
            f.A.normal_()
            f.B.normal_()
    x = torch.randn(2, 5, 48)
    y, y0 = qkv(x), qkv.base(x)
    assert torch.equal(y[..., 48:96], y0[..., 48:96])
    assert not torch.allclose(y[..., :48], y0[..., :48]) and not torch.allclose(y[..., 96:], y0[..., 96:])


def test_dora_equation_detached_norm_and_reinit_from_current_base() -> None:
    base = _qkv()
    layer = DoRALinear(base, {p: part_rows(p, 18) for p in ("q", "v")}, rank=2, scale=1.5)
    layer.reset(torch.Generator().manual_seed(0))
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x), atol=1e-6, rtol=1e-6)  # starts exactly at W
    with torch.no_grad():
        for p in layer.parts:
            layer.lora[p].B.normal_()
            layer.magnitude[p].mul_(1.3)
    w, b = base.weight, base.bias
    a_q, b_q = layer.lora["q"].A, layer.lora["q"].B
    v = w[:6] + 1.5 * b_q @ a_q
    expect_q = x @ (layer.magnitude["q"] / v.norm(dim=1).detach()).unsqueeze(1).mul(v).T + b[:6]
    y = layer(x)
    torch.testing.assert_close(y[:, :6], expect_q, atol=1e-5, rtol=1e-5)
    assert torch.equal(y[:, 6:12], base(x)[:, 6:12])
    # No gradient through the norm: B's gradient equals the detached-norm formula's, not the attached one's.
    g_ours = torch.autograd.grad(y[:, :6].sum(), b_q)[0]
    g_det = torch.autograd.grad(expect_q.sum(), b_q)[0]
    v2 = w[:6] + 1.5 * b_q @ a_q
    attached = x @ (layer.magnitude["q"] / v2.norm(dim=1)).unsqueeze(1).mul(v2).T
    g_att = torch.autograd.grad(attached.sum(), b_q)[0]
    torch.testing.assert_close(g_ours, g_det, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(g_ours, g_att, atol=1e-4)
    # The magnitude follows the *current* base weight at re-init (recast+dora: the generated weight).
    with torch.no_grad():
        base.weight.mul_(2.0)
    layer.reset(torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), base(x), atol=1e-5, rtol=1e-5)


def test_adaptformer_block_equation_uses_pre_norm_stream() -> None:
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    method = build_method("adaptformer", {"adaptformer": {"bottleneck": 3, "scale": 0.7}}, "vit")
    ref_block = copy.deepcopy(model.backbone.blocks[1]).eval()
    method.setup(model)
    block = model.backbone.blocks[1].eval()
    assert isinstance(block.mlp, ParallelAdapterMLP)
    ad = block.mlp.adapter
    with torch.no_grad():
        ad.up.weight.normal_()
        ad.up.bias.normal_()
    x = torch.randn(2, 5, 48)
    x1 = x + ref_block.attn(ref_block.norm1(x))
    expect = x1 + ref_block.mlp(ref_block.norm2(x1)) + 0.7 * ad.up(F.relu(ad.down(x1)))
    torch.testing.assert_close(block(x), expect, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ad.up.weight.zero_()
        ad.up.bias.zero_()
    torch.testing.assert_close(block(x), ref_block(x), atol=1e-6, rtol=1e-6)


def test_rosa_equation_and_gradient_chosen_support() -> None:
    base = nn.Linear(6, 5)
    layer = RosaLinear(base, {"all": (0, 5)}, ["all"], ["all"], rank=2, scale=0.5, density=0.2)
    sp = layer.sparse["all"]
    assert sp.values.numel() == 6  # int(0.2 * 30)
    with torch.no_grad():
        layer.lora["all"].A.normal_()
        layer.lora["all"].B.normal_()
        sp.index.copy_(torch.tensor([0, 4, 7, 11, 20, 29]))
        sp.values.normal_()
    s = torch.zeros(30)
    s[sp.index] = sp.values.detach()
    x = torch.randn(4, 6)
    f = layer.lora["all"]
    expect = base(x) + 0.5 * x @ f.A.T @ f.B.T + x @ s.view(5, 6).T
    torch.testing.assert_close(layer(x), expect, atol=1e-5, rtol=1e-5)
    score = torch.rand(5, 6)
    d = SparseDelta(5, 6, 0.2)
    d.select(score)
    assert set(d.index.tolist()) == set(score.flatten().topk(6).indices.tolist())


def _tiny_task(n: int = 24, classes: int = 3, size: int = 32) -> Task:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes)
    return Task("t", classes, ds, ds, ds)


def test_rosa_support_is_top_k_of_squared_weight_gradient_through_the_task_head() -> None:
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features).eval()
    ref = copy.deepcopy(model)
    cfg = {"variant": "custom", "lora_targets": [], "sparse_targets": ["fc1"], "density": 0.001}
    method = build_method("rosa", {"rosa": {**cfg, "warmup_steps": 0, "grad_batches": 2}}, "vit")
    method.setup(model)
    task = _tiny_task()
    loader = DataLoader(task.train, batch_size=8)
    method.on_task_start(model, 0, task, loader)
    head = model.heads["t0"]  # the task's own head (seeded), not a throw-away probe
    assert head.out_features == task.num_classes
    weights = [blk.mlp.fc1.weight for blk in ref.backbone.blocks]
    acc = [torch.zeros_like(w) for w in weights]
    ref.train()
    for i, (x, y) in enumerate(loader):
        if i == 2:
            break
        grads = torch.autograd.grad(F.cross_entropy(head(ref.backbone(x)), y), weights)
        acc = [a + g**2 for a, g in zip(acc, grads)]
    for blk, a in zip(model.backbone.blocks, acc):
        sp = blk.mlp.fc1.sparse["fc1"]
        assert sp.values.numel() == int(0.001 * a.numel())  # official floor
        assert set(sp.index.tolist()) == set(a.flatten().topk(sp.values.numel()).indices.tolist())


def test_rosa_full_chooses_its_support_after_a_lora_warm_up_then_restarts() -> None:
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    base = TaskModel(bb, bb.num_features).eval()
    task = _tiny_task(n=32)
    supports, loras = {}, {}
    for steps in (0, 6):
        model = copy.deepcopy(base)
        method = build_method("rosa", {"rosa": {"variant": "full", "warmup_steps": steps, "lr": 5e-2}}, "vit")
        method.ctx = RunContext(seed=0)
        method.setup(model)
        method.on_task_start(model, 0, task, DataLoader(task.train, batch_size=8))
        layers = [m for m in model.modules() if isinstance(m, RosaLinear)]
        supports[steps] = torch.cat([s.index for m in layers for s in m.sparse.values()])
        loras[steps] = [(f.A.clone(), f.B.clone()) for m in layers for f in m.lora.values()]
        assert all(not p.requires_grad for p in model.parameters())  # nothing left trainable behind the engine
        assert all(float(s.values.abs().sum()) == 0 for m in layers for s in m.sparse.values())
    # The warm-up trains LoRA and the head on the task's loss, so the gradient and hence the support change ...
    assert not torch.equal(supports[0], supports[6])
    # ... and afterwards the adapters restart: the same fresh LoRA with or without the warm-up, B = 0.
    for (a0, _), (a6, b6) in zip(loras[0], loras[6], strict=True):
        assert torch.equal(a0, a6) and not b6.any()


def _note_worker_start(folder: str, worker_id: int) -> None:
    """A worker_init_fn leaving one file per worker process started (runs in the worker)."""
    open(os.path.join(folder, f"{os.getpid()}-{worker_id}-{time.monotonic_ns()}"), "w").close()


def test_rosa_warm_up_starts_its_loader_workers_once_over_several_passes(tmp_path) -> None:
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    base = TaskModel(bb, bb.num_features).eval()
    task = _tiny_task(n=24)  # 3 batches of 8: the 7 warm-up steps and 1 gradient batch take 3 passes
    cfg = {"variant": "custom", "lora_targets": ["q"], "sparse_targets": ["fc1"], "density": 0.01, "warmup_steps": 7}
    supports = []
    for workers in (1, 0):
        starts = tmp_path / f"starts-{workers}"
        starts.mkdir()
        loader = DataLoader(
            task.train, batch_size=8, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(5),
            worker_init_fn=functools.partial(_note_worker_start, str(starts)),
        )  # fmt: skip
        model = copy.deepcopy(base)
        method = build_method("rosa", {"rosa": cfg}, "vit")
        method.ctx = RunContext(seed=0)
        method.setup(model)
        method.on_task_start(model, 0, task, loader)
        assert len(list(starts.iterdir())) == workers  # one start for all passes (was one per pass: 3)
        supports.append(
            torch.cat([s.index for m in model.modules() if isinstance(m, RosaLinear) for s in m.sparse.values()])
        )
    # Same batches in the same order as in the main process: the endless pass keeps the loader's sampler and seed.
    assert torch.equal(supports[0], supports[1])


def test_rosa_trains_low_rank_and_sparse_parts_at_their_own_lr(vit_small) -> None:
    model, method = _setup(vit_small, "rosa", {"variant": "full", "lora_lr": 7e-4, "sparse_lr": 2e-4})
    hp = method.param_hparams(model)
    assert {v for k, v in hp.items() if ".lora." in k} == {(7e-4, 1e-6)}
    assert {v for k, v in hp.items() if k.endswith(".values")} == {(2e-4, 1e-6)}
    default = _setup(vit_small, "rosa", {"variant": "full"})
    assert set(default[1].param_hparams(default[0]).values()) == {(2e-3, 1e-6)}  # paper: one lr


def test_inflora_designed_a_avoids_earlier_subspace_and_only_k_v_change() -> None:
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features).eval()
    method = build_method("inflora", {"inflora": {"rank": 4}}, "vit")
    method.setup(model)
    task = _tiny_task()
    loader = DataLoader(task.train, batch_size=8)
    method.on_task_start(model, 0, task, loader)
    qkv = model.backbone.blocks[0].attn.qkv
    assert isinstance(qkv, InfLoRAQKV) and list(qkv.parts) == ["k", "v"]
    torch.testing.assert_close(qkv.A @ qkv.A.T * 3, torch.eye(4), atol=1e-5, rtol=0)  # orthonormal / sqrt 3
    method.on_task_end(model, 0, task, loader)
    occ = qkv.occupied()
    assert 1 <= occ.shape[1] < 48
    task2 = _tiny_task(n=24, classes=2)
    method.on_task_start(model, 1, task2, DataLoader(task2.train, batch_size=8))
    assert (qkv.A.double() @ occ).abs().max() < 1e-5  # A_2 lies outside the occupied subspace
    with torch.no_grad():
        qkv.B["k"].normal_()
        qkv.B["v"].normal_()
    x = torch.randn(2, 5, 48)
    assert torch.equal(qkv(x)[..., :48], qkv.base(x)[..., :48])  # Q rows untouched
    assert set(method.shared_buffers(model)) >= {"backbone.blocks.0.attn.qkv.basis"}


def _epoch_lrs(sched_conf: dict, opt: torch.optim.Optimizer, epochs: int) -> list[list[float]]:
    """Each group's lr in every epoch, stepped once per epoch as Lightning steps an ``interval: epoch`` scheduler."""
    assert sched_conf["interval"] == "epoch"
    lrs = []
    for _ in range(epochs):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched_conf["scheduler"].step()
    return lrs


def test_inflora_official_cosine_schedule_over_10_epochs_and_step_keeps_the_engines() -> None:
    from recast_bench.config import TrainerConfig

    method = build_method("inflora", {"inflora": {}}, "vit")
    assert method.cfg.schedule == "official" and method.cfg.optimizer == "adam"
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 5e-4}, {"params": [nn.Parameter(torch.zeros(1))]}]
    opt = torch.optim.Adam(groups, lr=1e-3)  # B at 5e-4, the head at another lr: both follow the same factor
    lrs = _epoch_lrs(method.lr_scheduler(opt, TrainerConfig(epochs=10)), opt, 10)
    # utils/schedulers.py CosineSchedule(K=10): step(0) at construction, then one step per epoch.
    official = [math.cos(99 * math.pi * e / (200 * 9)) for e in range(10)]
    for e in range(10):
        assert lrs[e] == pytest.approx([5e-4 * official[e], 1e-3 * official[e]], rel=1e-12)
    assert lrs[0] == [5e-4, 1e-3] and lrs[-1][0] == pytest.approx(5e-4 * math.cos(0.495 * math.pi))  # ~1.6 % left
    assert all(b[0] < a[0] for a, b in zip(lrs, lrs[1:], strict=False))
    # The official SGD branch: torch's CosineAnnealingLR(T_max=epochs).
    sgd = build_method("inflora", {"inflora": {"optimizer": "sgd"}}, "vit")
    p = nn.Parameter(torch.zeros(1))
    opt, ref_opt = torch.optim.SGD([p], lr=0.01), torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=10)
    got = _epoch_lrs(sgd.lr_scheduler(opt, TrainerConfig(epochs=10)), opt, 10)
    want = _epoch_lrs({"scheduler": ref, "interval": "epoch"}, ref_opt, 10)
    assert got == want and got[5][0] == pytest.approx(0.005)
    step = build_method("inflora", {"inflora": {"schedule": "step"}}, "vit")
    assert step.lr_scheduler(torch.optim.Adam([p]), TrainerConfig(epochs=10)) is None
    with pytest.raises(UserError, match="inflora schedule must be one of official, step"):
        build_method("inflora", {"inflora": {"schedule": "cosine"}}, "vit")


def test_dualgpm_threshold_picks_energy_fraction() -> None:
    u = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64)).Q
    s = torch.tensor([10.0, 5.0, 1.0, 0.5, 0.1, 0.0, 0.0, 0.0], dtype=torch.float64)
    cov = u @ torch.diag(s) @ u.T
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    occ = dualgpm_update(cov, torch.zeros(8, 0, dtype=torch.float64), 0.95)
    assert occ.shape[1] == int((energy < 0.95).sum()) == 1
    occ2 = dualgpm_update(cov, occ, 0.999)
    assert occ2.shape[1] > 1 and torch.allclose(occ2.T @ occ2, torch.eye(occ2.shape[1], dtype=torch.float64))
    assert math.isclose(float((u[:, 0] @ occ).abs().max()), 1.0, rel_tol=1e-6)


def test_qkv_part_rows() -> None:
    assert [part_rows(p, 18) for p in QKV_PARTS] == [(0, 6), (6, 12), (12, 18)]
    assert part_rows("fc1", 40) == (0, 40)
