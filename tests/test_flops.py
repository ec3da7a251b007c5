"""The FLOP counts behind the cost model: closed-form counts of tiny layers, the per-image/per-step split, each row's
step built as a run builds it (frozen weights skip their weight-gradient GEMM), and the packaged table covering every
bench row of both tables as its protocol card describes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recast_bench.perf.flops import (
    BENCH_BACKBONES,
    HEAD_CLASSES,
    StepFlops,
    _full_row,
    count_row,
    count_step,
    counting,
    load_table,
    row_builder,
)
from recast_bench.protocol.cards import bench_rows, by_id


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    with counting() as f:
        y = module(x)
    with counting() as b:
        y.sum().backward()
    return f.get_total_flops(), b.get_total_flops()


def test_closed_form_counts_of_a_linear_layer():
    lin = nn.Linear(8, 4, bias=False).to("meta")
    x = torch.randn(3, 8, device="meta", requires_grad=True)
    assert _fwd_bwd(lin, x) == (2 * 3 * 8 * 4, 2 * (2 * 3 * 8 * 4))  # backward: input and weight gradient GEMMs
    lin.weight.requires_grad_(False)  # frozen: autograd skips the weight-gradient GEMM
    assert _fwd_bwd(lin, x) == (2 * 3 * 8 * 4, 2 * 3 * 8 * 4)
    lin.weight.requires_grad_(True)  # the first layer: no input gradient (images need none)
    assert _fwd_bwd(lin, torch.randn(3, 8, device="meta")) == (2 * 3 * 8 * 4, 2 * 3 * 8 * 4)


@pytest.mark.parametrize("groups", [1, 16])
def test_closed_form_counts_of_a_grouped_convolution(groups):
    """A depthwise 3x3 (CLR's reprogramming) trains its weight at the forward's count; torch's own formula counts
    the weight gradient ``groups`` times too high."""
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False).to("meta")
    x = torch.randn(2, 16, 8, 8, device="meta", requires_grad=True)
    forward = 2 * 2 * 16 * 8 * 8 * (16 // groups) * 9
    assert _fwd_bwd(conv, x) == (forward, 2 * forward)


class _Generated(nn.Module):
    """``y = x (A B)``: a weight generated once per step from two factors, as RECAST does from its banks."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(5, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.a @ self.b)


def test_per_image_and_per_step_flops_are_told_apart():
    m = _Generated().to("meta")
    got = count_step(lambda x, y: m(x.flatten(1)[:, :6]).sum(), lambda x: m(x.flatten(1)[:, :6]), [m], 4, "meta")
    assert got["forward"] * 1e9 == pytest.approx(2 * 6 * 7)  # x (A B) per image
    assert got["forward_fixed"] * 1e9 == pytest.approx(2 * 6 * 5 * 7)  # A B once per step
    # backward: x needs no gradient; the generated weight's gradient (per image), then both factors' (per step)
    assert got["backward"] * 1e9 == pytest.approx(2 * 6 * 7)
    assert got["backward_fixed"] * 1e9 == pytest.approx(2 * (2 * 6 * 5 * 7))
    s = StepFlops(**got, trainable=0, counted_on="meta")
    assert s.train(10) == pytest.approx((2 * 2 * 6 * 7) / 1e9 + 3 * 2 * 6 * 5 * 7 / 1e9 / 10)


def test_the_cpu_count_is_the_meta_count():
    """Rows that cannot run on the meta device are counted on the CPU, whose fused attention kernels torch's counter
    does not list: counted as model FLOPs, they give the meta device's numbers exactly."""
    from recast_bench.backbones import get_spec

    size = get_spec("vit_tiny").image_size
    counts = {}
    for device in ("meta", "cpu"):
        train_fn, eval_fn, modules, _ = _full_row("vit_tiny")
        for m in modules:
            m.to(device)
        counts[device] = count_step(train_fn, eval_fn, modules, size, device)
    assert counts["cpu"] == counts["meta"] and counts["meta"]["backward"] > 1.9 * counts["meta"]["forward"]


def _tiny(card_id: str, backbone: str) -> StepFlops:
    from recast_bench.backbones import get_spec

    family = "resnet" if "resnet" in backbone else "vit"
    build = (lambda: _full_row(backbone)) if card_id == "full" else row_builder(by_id(card_id, family), backbone)
    return count_row(build, get_spec(backbone).image_size)


def test_each_rows_step_on_tiny_backbones():
    full, adapter, recast = (_tiny(r, "vit_tiny") for r in ("full", "adaptformer", "recast"))
    assert full.forward == pytest.approx(adapter.forward, rel=0.01)  # the adapters add little to the forward
    # every weight trains: input and weight gradients (the patch embedding needs no input gradient)
    assert 2.8 < full.train(128) / full.forward <= 3.0
    assert 1.5 < adapter.train(128) / adapter.forward < 2.0  # frozen backbone: input gradients only
    assert adapter.train(128) < recast.train(128) < full.train(128)  # the generated MLP weights need their gradient
    assert recast.forward_fixed > 0 and adapter.forward_fixed == 0  # RECAST generates its weights once per step
    assert recast.counted_on == "cpu" and adapter.counted_on == "meta"  # autocast refuses the meta device
    clr = _tiny("clr", "resnet_tiny")  # a depthwise conv after each frozen conv: input gradients, its own weights
    assert 1.5 < clr.train(64) / clr.forward < 2.0 and clr.counted_on == "meta"


def test_the_table_covers_every_bench_row_as_its_card_counts_it():
    """Fails when a bench row is added (or its structure changes) without ``python -m recast_bench.perf.flops
    --write``: every row of both tables is in the table and was built with its card's per-task count."""
    table = load_table()
    assert set(table["backbones"]) == set(BENCH_BACKBONES) and table["head_classes"] == HEAD_CLASSES
    for backbone in BENCH_BACKBONES:
        rows = table["backbones"][backbone]["rows"]
        cards = bench_rows(backbone)
        assert list(rows) == [c.id for c in cards], f"{backbone}: regenerate with python -m recast_bench.perf.flops"
        for card in cards:
            assert rows[card.id]["trainable"] == card.count, f"{backbone} {card.id}: regenerate the FLOP table"


def test_the_table_shows_what_each_kind_of_row_costs():
    """On the real architectures: every weight ~3x forward, frozen backbones ~2x, RECAST in between, L2P adds its
    query forward; per-step work is small beside a batch."""
    for backbone, batch, frozen in (("vit_small", 128, ("adaptformer", "rosa@sparse_mlp")), ("resnet34", 64, ("clr",))):
        t = load_table()["backbones"][backbone]
        full = StepFlops(**t["full"])
        rows = {k: StepFlops(**v) for k, v in t["rows"].items()}
        assert 2.95 < full.train(batch) / full.forward <= 3.0
        for r in frozen:
            assert 1.95 < rows[r].train(batch) / rows[r].forward < 2.05
        assert 2.5 < rows["recast"].train(batch) / rows["recast"].forward < 2.7
        assert rows["recast"].forward_fixed / batch < 0.01 * rows["recast"].forward
    l2p = StepFlops(**load_table()["backbones"]["vit_small"]["rows"]["l2p"])
    assert l2p.eval == pytest.approx(9.2 + 10.45, abs=0.1)  # the query ViT (197 tokens) and the prompted (222)
