"""The LoRA family's unmerged forward (``x W^T + b`` beside ``s (x A^T) B^T``, RoSA's sparse ``x S^T``, DoRA's
scaled sum) against the merged form ``x W'^T + b`` it replaced, on the real tiny ViT.

Stated tolerances (float32, relative to the largest entry of the compared tensor): each adapted layer's output
within 5e-6 (measured <= 1e-6), the backbone's output after 4 blocks within 1e-4 (measured <= 1.3e-5: RoSA's
scale 16 amplifies the summation-order noise of random adapters) and every adapter gradient within 5e-4 (measured
<= 9.2e-5): the two forms are the same function summed in another order.
Under bf16 autocast the merged form rounds ``W + dW`` to bf16 before the GEMM; the unmerged form keeps ``dW`` out
of ``W`` (the bf16 test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines._vit import RowAdaptedLinear, modules_of
from baselines.rosa import SparseDelta
from recast_bench.backbones import build_backbone
from recast_bench.deploy.merge import merged_copy
from recast_bench.engine.build import build_method
from recast_bench.engine.method import RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.registry import parse_method_name

RECAST_TINY = {"groups": 2, "mimic_iters": 5}
"""vit_tiny has 4 blocks (the paper's G=6 cannot apply); a few mimicry steps: only the generated weight matters."""
SPARSE = {"variant": "custom", "lora_targets": ["v", "fc1"], "sparse_targets": ["q", "v", "fc1"], "density": 1e-3}
"""RoSA with few active entries per part (gathered path) and LoRA on some of the sparse parts."""
CASES = {
    "lora": ("lora", {"lora": {"targets": ["q", "v", "fc2"], "rank": 2}}),
    "lora-shared-pruned": ("lora", {"lora": {"shared": True, "density": 0.5}}),
    "melo": ("melo", {}),
    "dora": ("dora", {"dora": {"targets": ["q", "k", "v", "fc1"], "rank": 2}}),
    "inflora": ("inflora", {"inflora": {"rank": 3}}),
    "rosa-full": ("rosa", {"rosa": {"variant": "full"}}),  # dense S on the fused qkv, gathered S on proj
    "rosa-sparse": ("rosa", {"rosa": SPARSE}),
    "recast+lora": ("recast+lora", {"recast": {**RECAST_TINY, "target": "attn"}}),  # LoRA on generated qkv
    "recast+dora": ("recast+dora", {"recast": {**RECAST_TINY, "target": "attn"}}),
    "recast+inflora": ("recast+inflora", {"recast": {**RECAST_TINY, "target": "attn"}}),
    "recast+rosa": ("recast+rosa", {"recast": RECAST_TINY, "rosa": SPARSE}),  # on generated fc1 / fc2
}


def merged_forward(self: RowAdaptedLinear, x: torch.Tensor) -> torch.Tensor:
    """The form every LoRA-family layer used before: the adapter folded into the weight, one GEMM."""
    return F.linear(x, self.effective_weight(), self.base.bias)


def _build(name: str, overrides: dict, tmp_path) -> tuple[TaskModel, object]:  # noqa: ANN001
    torch.manual_seed(0)
    bb, spec, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features).eval()
    method = build_method(name, {p: overrides.get(p, {}) for p in parse_method_name(name)}, "vit")
    method.ctx = RunContext(backbone_name="vit_tiny", family="vit", cache_dir=str(tmp_path), seed=0, image_size=32)
    method.setup(model)
    return model, method


def _randomise(model: TaskModel, params: dict[str, torch.nn.Parameter]) -> None:
    """Every adapter away from its (identity) init: random factors, magnitudes, sparse supports and values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in model.modules():
            if isinstance(s, SparseDelta):
                s.select(torch.rand(s.shape, generator=g))
        for layer in modules_of(model, RowAdaptedLinear).values():
            if isinstance(getattr(layer, "A", None), torch.Tensor):  # InfLoRA's designed A is a buffer
                layer.A.copy_(torch.randn(layer.A.shape, generator=g) * 0.2)
        for name, p in params.items():
            if "coefficients" not in name:  # RECAST's own coefficients keep their mimicked values
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "magnitude" in name else 0.0))


def _run(model: TaskModel, params: dict, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model.backbone(x)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), list(params.values()))
    return out.detach(), list(grads)


def close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str) -> None:
    """``|got - want| <= rel * max|want|`` everywhere."""
    err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
    assert err <= rel, f"{what}: max |diff| is {err:.2e} of max |value| (allowed {rel:.0e})"


def layer_inputs(model: TaskModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real input of every adapted layer on ``x``."""
    seen: dict[str, torch.Tensor] = {}
    layers = modules_of(model, RowAdaptedLinear)
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.update({n: i[0].detach()})) for n, m in layers.items()]
    with torch.no_grad():
        model.backbone(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_unmerged_forward_equals_the_merged_form_in_fp32(case, tmp_path, monkeypatch) -> None:
    model, method = _build(*CASES[case], tmp_path)
    params = {**method.task_parameters(model), **method.shared_parameters(model)}
    _randomise(model, params)
    assert params and all(p.dtype == torch.float32 for p in params.values())
    for p in params.values():
        p.requires_grad_(True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layers = modules_of(model, RowAdaptedLinear)
    for name, inp in layer_inputs(model, x).items():
        with torch.no_grad():
            close(layers[name](inp), merged_forward(layers[name], inp), 5e-6, name)
    out, grads = _run(model, params, x)
    with torch.no_grad():
        exported = merged_copy(model.backbone)(x)  # what `recast-bench export` folds: still exact
    with monkeypatch.context() as m:
        m.setattr(RowAdaptedLinear, "forward", merged_forward)
        ref_out, ref_grads = _run(model, params, x)
        m.setattr(RowAdaptedLinear, "forward", lambda self, x: self.base(x))
        with torch.no_grad():
            plain = model.backbone(x)
    assert (out - plain).abs().max() > 0.05  # the adapters do change the output: the comparison is not vacuous
    close(out, ref_out, 1e-4, "backbone output")
    close(exported, out, 1e-4, "exported (merged) backbone")
    for name, g, r in zip(params, grads, ref_grads, strict=True):
        close(g, r, 5e-4, f"gradient of {name}")


def test_bf16_autocast_keeps_a_small_lora_delta_that_the_merged_weight_rounds_away(monkeypatch) -> None:
    """A LoRA delta of 2^-10 of the weight (median entry): merged into W and cast to bf16, most of its entries round
    to nothing and the rest to whole bf16 steps, so its effect on the output is mostly noise; computed beside W, the
    delta keeps its own bf16 precision and only the final sum is rounded."""
    torch.manual_seed(0)
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(bb, bb.num_features).eval()
    method = build_method("lora", {}, "vit")
    method.ctx = RunContext(seed=0)
    method.setup(model)
    layer = model.backbone.blocks[0].attn.qkv
    seen = {}
    hook = layer.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach()))
    with torch.no_grad():
        model.backbone(torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    hook.remove()
    x = seen["x"]  # the real input of the layer: 32 images x 17 tokens
    g = torch.Generator().manual_seed(0)
    w = layer.base.weight.detach()
    with torch.no_grad():
        for part, f in layer.lora.items():
            f.reset(g)  # LoRA's own A init
            f.B.copy_(torch.randn(f.B.shape, generator=g))
            a, b = layer.parts[part]
            f.B.mul_(2**-10 * w[a:b].abs().median() / f.delta(layer.scale).abs().median())

    def effect_fidelity(forward) -> float:  # noqa: ANN001
        """Cosine between the delta's effect on the output under bf16 autocast and in float32."""
        with torch.no_grad():
            exact = forward(layer, x) - layer.base(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = forward(layer, x).float() - layer.base(x).float()
        return float(F.cosine_similarity(got.flatten(), exact.flatten(), dim=0))

    unmerged, merged = effect_fidelity(RowAdaptedLinear.forward), effect_fidelity(merged_forward)
    # Measured (torch 2.14 CPU): unmerged 0.84, merged 0.52.
    assert unmerged > 0.75 > 0.6 > merged, (unmerged, merged)
