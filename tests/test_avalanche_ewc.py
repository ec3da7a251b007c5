"""EWC's flat penalty: the value and gradients of avalanche's own loop, in a few ops whatever the network."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("avalanche")

from avalanche.training.plugins import EWCPlugin  # noqa: E402
from avalanche.training.utils import ParamData  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from baselines.avalanche_ewc import FlatEWCPlugin  # noqa: E402
from recast_bench.backbones import build_backbone  # noqa: E402


class _Count(TorchDispatchMode):
    """Counts the aten ops that launch work: views, slices and autograd's detaches only touch metadata."""

    METADATA = ("aten.view", "aten.slice", "aten.detach", "aten.expand", "aten._unsafe_view", "aten.alias")

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops += not str(func).startswith(self.METADATA)
        return func(*args, **(kwargs or {}))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    bb, _, _ = build_backbone("resnet_tiny", allow_random_init=True, weights_dir="/nonexistent")
    return bb


def _fill(plugin: EWCPlugin, net: torch.nn.Module, experiences: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for e in range(experiences):
        plugin.saved_params[e] = {
            k: ParamData(k, init_tensor=p.detach() + 0.1 * torch.randn(p.shape, generator=g))
            for k, p in net.named_parameters()
        }
        plugin.importances[e] = {
            k: ParamData(k, init_tensor=torch.rand(p.shape, generator=g)) for k, p in net.named_parameters()
        }


def _penalty(plugin: EWCPlugin, net: torch.nn.Module, exp_counter: int, count: bool = False):  # noqa: ANN202
    net.zero_grad()
    s = SimpleNamespace(clock=SimpleNamespace(train_exp_counter=exp_counter), model=net, device="cpu")
    s.loss = torch.zeros(())
    mode = _Count()
    with mode if count else torch.enable_grad():
        plugin.before_backward(s)
        if s.loss.requires_grad:
            s.loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    return s.loss.detach(), grads, mode.ops


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_flat_penalty_equals_avalanche_with_its_gradients_in_few_ops(mode: str) -> None:
    net = _net()
    kw = {"decay_factor": 0.5} if mode == "online" else {}
    ref, flat = EWCPlugin(0.4, mode, **kw), FlatEWCPlugin(0.4, mode, **kw)
    _fill(ref, net, 3)
    flat.saved_params, flat.importances = ref.saved_params, ref.importances
    _penalty(flat, net, 3)  # the first step concatenates the anchors; later steps reuse them
    want, want_g, ref_ops = _penalty(ref, net, 3, count=True)
    got, got_g, flat_ops = _penalty(flat, net, 3, count=True)
    assert want.item() > 0
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-5, atol=1e-7)
    experiences = 3 if mode == "separate" else 1
    n_params = len(list(net.parameters()))
    assert ref_ops >= 8 * n_params * experiences  # avalanche: ~10 kernels per tensor per experience
    assert flat_ops <= 15 * experiences + 5  # a few per experience, whatever the network


def test_no_penalty_on_the_first_experience_and_new_state_rebuilds_the_cache() -> None:
    net = _net()
    flat = FlatEWCPlugin(1.0, "separate")
    assert _penalty(flat, net, 0)[0].item() == 0.0
    _fill(flat, net, 1, seed=1)
    first = _penalty(flat, net, 1)[0].item()
    ref = EWCPlugin(1.0, "separate")
    _fill(ref, net, 1, seed=2)
    flat.saved_params, flat.importances = ref.saved_params, ref.importances  # a checkpoint load swaps both
    assert _penalty(flat, net, 1)[0].item() == pytest.approx(_penalty(ref, net, 1)[0].item(), rel=1e-5)
    assert _penalty(flat, net, 1)[0].item() != pytest.approx(first, rel=1e-3)


def test_a_grown_parameter_keeps_avalanches_expanding_term() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 6)
    ref, flat = EWCPlugin(1.0, "separate"), FlatEWCPlugin(1.0, "separate")
    for p in (ref, flat):  # the head had 4 outputs when experience 0 was saved
        p.saved_params[0] = {"weight": ParamData("weight", init_tensor=torch.ones(4, 4)),
                             "bias": ParamData("bias", init_tensor=torch.ones(6))}  # fmt: skip
        p.importances[0] = {"weight": ParamData("weight", init_tensor=torch.full((4, 4), 2.0)),
                            "bias": ParamData("bias", init_tensor=torch.full((6,), 3.0))}  # fmt: skip
    want, want_g, _ = _penalty(ref, net, 1)
    got, got_g, _ = _penalty(flat, net, 1)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(got_g["weight"], want_g["weight"])
    torch.testing.assert_close(got_g["bias"], want_g["bias"])


def test_the_ewc_strategy_runs_the_flat_penalty() -> None:
    from test_avalanche import tiny_learner

    learner, _ = tiny_learner("ewc", "resnet_tiny")
    plugins = [p for p in learner.strategy.plugins if isinstance(p, EWCPlugin)]
    assert len(plugins) == 1 and type(plugins[0]) is FlatEWCPlugin


class _All(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_the_cost_models_ewc_host_ops_are_the_counted_ones() -> None:
    """perf/work.py charges EWC's host time from these counts (resnet_tiny has ResNet-34's 108 parameter tensors)."""
    from recast_bench.perf.work import EWC_EXP_OPS, EWC_STEP_OPS

    net = _net()
    assert len(list(net.parameters())) == 108
    counts = []
    for experiences in (1, 2):
        flat = FlatEWCPlugin(0.4, "separate")
        _fill(flat, net, experiences)
        _penalty(flat, net, experiences)
        net.zero_grad()
        s = SimpleNamespace(clock=SimpleNamespace(train_exp_counter=experiences), model=net, device="cpu")
        s.loss = torch.zeros(())
        mode = _All()
        with mode:
            flat.before_backward(s)
            s.loss.backward()
        counts.append(mode.ops)
    assert counts == [EWC_STEP_OPS + EWC_EXP_OPS, EWC_STEP_OPS + 2 * EWC_EXP_OPS]
