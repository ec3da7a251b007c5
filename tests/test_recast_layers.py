"""RECAST generated-weight layers: the paper's Eq. 1-2, drop-in behaviour, the never-stale cache, joint init."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.recast.layers import ReparamConv2d, ReparamLinear, TemplateBank, joint_orthogonal_


def _reference_weight(coef: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    # Eq. 1-2 literally: W^k = sum_i C[k,i] T_i, then the mean over k.
    per_set = [sum(coef[k, i] * templates[i] for i in range(templates.shape[0])) for k in range(coef.shape[0])]
    return torch.stack(per_set).mean(0)


def test_linear_weight_is_mean_over_sets_of_template_mix():
    torch.manual_seed(0)
    bank = TemplateBank(3, (5, 4))
    layer = ReparamLinear(bank, num_sets=2, bias=torch.randn(5))
    assert (layer.in_features, layer.out_features) == (4, 5)
    expected = _reference_weight(layer.coefficients.detach(), bank.templates.detach())
    torch.testing.assert_close(layer.weight.detach(), expected)
    x = torch.randn(7, 4)
    torch.testing.assert_close(layer(x), F.linear(x, expected, layer.bias))


def test_conv_matches_nn_conv2d_with_generated_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
    bank = TemplateBank(2, tuple(conv.weight.shape))
    layer = ReparamConv2d.from_conv(conv, bank, num_sets=3)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride) == (3, 6, (3, 3), (2, 2))
    with torch.no_grad():
        conv.weight.copy_(_reference_weight(layer.coefficients, bank.templates))
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), conv(x))


def test_gradients_reach_coefficients_and_templates():
    bank = TemplateBank(2, (3, 3))
    layer = ReparamLinear(bank, 2)
    layer(torch.randn(4, 3)).sum().backward()
    assert layer.coefficients.grad is not None and layer.coefficients.grad.abs().sum() > 0
    assert bank.templates.grad is not None and bank.templates.grad.abs().sum() > 0


def test_bank_is_shared_not_registered_per_layer():
    bank = TemplateBank(2, (3, 3))
    a, b = ReparamLinear(bank, 2), ReparamLinear(bank, 2)
    assert a.bank is b.bank
    assert "bank.templates" not in dict(a.named_parameters())
    holder = nn.ModuleDict({"bank": bank, "a": a, "b": b})
    clone = copy.deepcopy(holder)
    assert clone["a"].bank is clone["bank"] and clone["b"].bank is clone["bank"]


def test_inference_cache_reuses_and_refreshes_after_changes():
    torch.manual_seed(0)
    bank = TemplateBank(2, (4, 4))
    layer = ReparamLinear(bank, 2)
    with torch.no_grad():
        w1 = layer.weight
        assert layer.weight is w1  # cached while nothing changed
        layer.coefficients.add_(1.0)  # in-place update (bumps the version counter)
        w2 = layer.weight
        assert w2 is not w1
        torch.testing.assert_close(w2, bank.generate(layer.coefficients))
        layer.coefficients.data.copy_(torch.zeros(2, 2))  # .data write: no version bump (documented) ...
        assert layer.weight is w2  # ... so the cache is reused: nothing on the hot path reads device values
        layer.invalidate_cache()  # what RECAST's state loading does after such writes
        assert layer.weight.abs().sum() == 0
        bank.templates.mul_(2.0)  # template change
        layer.coefficients.fill_(1.0)
        torch.testing.assert_close(layer.weight, bank.templates.sum(0))
    # With autograd on the cache is bypassed: the weight must carry a graph.
    assert layer.weight.requires_grad and layer.weight.grad_fn is not None


@pytest.mark.parametrize("opt_kwargs", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_inference_cache_follows_optimizer_steps_without_reading_values(opt_kwargs, monkeypatch):
    torch.manual_seed(0)
    bank = TemplateBank(2, (4, 4))
    layer = ReparamLinear(bank, 2)
    opt = torch.optim.AdamW([layer.coefficients], lr=0.1, **opt_kwargs)
    x = torch.randn(3, 4)
    # The cache check must not compare tensor values (a host sync per layer per batch on CUDA).
    monkeypatch.setattr(torch, "equal", lambda *a: (_ for _ in ()).throw(AssertionError("torch.equal called")))
    with torch.no_grad():
        w0 = layer.weight
        assert layer.weight is w0
    for _ in range(2):  # training mode: graph-carrying weights, then an optimizer step
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
        with torch.no_grad():
            w = layer.weight
            assert w is not w0, "cache not invalidated by the optimizer step"
            torch.testing.assert_close(w, bank.generate(layer.coefficients))
            assert layer.weight is w  # and reused until the next change
            w0 = w
    with torch.no_grad():  # load_state_dict copies in place: invalidated too
        layer.load_state_dict({**layer.state_dict(), "coefficients": torch.zeros(2, 2)})
        assert layer.weight.abs().sum() == 0


def test_joint_orthogonal_init_across_modules_of_a_bank():
    torch.manual_seed(0)
    few = [torch.empty(2, 8) for _ in range(3)]  # 6 vectors of length 8: rows orthonormal jointly
    joint_orthogonal_(few)
    rows = torch.cat(few)
    torch.testing.assert_close(rows @ rows.T, torch.eye(6), atol=1e-5, rtol=0)
    many = [torch.empty(2, 2) for _ in range(3)]  # 6 vectors of length 2: columns orthogonal, unit mean norm
    joint_orthogonal_(many)
    m = torch.cat(many)
    gram = m.T @ m
    assert abs(gram[0, 1]) < 1e-5
    assert torch.allclose(m.pow(2).sum(1).mean(), torch.tensor(1.0), atol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="template"):
        TemplateBank(0, (3, 3))
    with pytest.raises(ValueError, match="2-d"):
        ReparamLinear(TemplateBank(2, (3, 3, 1, 1)), 2)
    with pytest.raises(ValueError, match="does not match"):
        ReparamLinear.from_linear(nn.Linear(3, 4), TemplateBank(2, (3, 3)), 2)
    with pytest.raises(ValueError, match="coefficient set"):
        ReparamLinear(TemplateBank(2, (3, 3)), 0)


def test_generated_weight_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    bank = TemplateBank(2, (64, 64))
    layer = ReparamLinear(bank, 2)
    with torch.no_grad():
        layer.coefficients.normal_()
    exact = layer.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = layer.weight
        y = layer(torch.randn(3, 64))
    assert w.dtype == torch.float32  # a bf16 contraction would round the cancelling template terms
    torch.testing.assert_close(w.detach(), exact, atol=0, rtol=0)
    assert y.dtype == torch.bfloat16  # the layer's own matmul still runs under autocast


def test_channels_last_bank_generates_nhwc_kernel_without_copy_and_same_values(tmp_path):
    # The GPU profile's NHWC layout for generated kernels: same values and gradients as the NCHW bank, the kernel
    # comes out channels_last, and the bank's state_dict still round-trips through safetensors.
    from recast_bench.engine.checkpoint import load_tensors, save_tensors
    from recast_bench.engine.device import to_channels_last

    torch.manual_seed(0)
    bank = TemplateBank(3, (6, 4, 3, 3))
    layer = ReparamConv2d(bank, num_sets=2, padding=(1, 1))
    ref_w = layer.weight.detach().clone()
    x = torch.randn(2, 4, 7, 7)
    layer(x).square().sum().backward()
    ref_grad, layer.coefficients.grad = layer.coefficients.grad.clone(), None
    host = nn.Module()
    host.bank, host.layer = bank, layer
    to_channels_last(host)  # what model.to(memory_format=torch.channels_last) could not do: a 5-d bank
    to_channels_last(host)  # idempotent
    assert bank.channels_last and bank.templates.shape == (3, 6, 4, 3, 3)
    w = layer.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and w.shape == (6, 4, 3, 3)
    assert w.data_ptr() != bank.templates.data_ptr()
    torch.testing.assert_close(w.detach(), ref_w, rtol=1e-6, atol=1e-6)
    layer(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    torch.testing.assert_close(layer.coefficients.grad, ref_grad, rtol=1e-5, atol=1e-5)
    lin = TemplateBank(2, (5, 4)).channels_last_()  # a linear bank is left alone
    assert lin.templates.is_contiguous() and not lin.channels_last
    save_tensors(tmp_path / "b.safetensors", dict(bank.state_dict()))
    torch.testing.assert_close(load_tensors(tmp_path / "b.safetensors")["templates"], bank.templates.detach())
