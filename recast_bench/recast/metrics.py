"""Reconstruction quality (paper Table 6 and section 2.2) and template diversity (appendix A.3).

* Feature similarity per block on one batch, as in the authors' notebooks: ViT -- cosine of the flattened token
  tensor of each block, per sample; ResNet -- cosine of the spatially averaged channels after each stage.
* Output similarity: cosine of the logits and top-1 agreement between the original and the reconstructed model.
* Diversity per bank, Appendix A.3 as written (the authors' code lacks these): ``frobenius`` -- ``avg_frobenius_g =
  1 / (n (n - 1)) * sum_{i < j} ||T_i - T_j||_F`` (the appendix's normalisation, i.e. half the mean pair distance;
  0 for one template), ``entropy`` -- ``avg_entropy_g = (1 / n) sum_i H(T_i)``, the Shannon entropy (nats) of each
  template's singular values (templates reshaped to ``out x rest``). The appendix says "entropy of singular values"
  without a normalisation; we read it literally, ``p_i = s_i / sum_j s_j`` (``power=2``, ``s_i^2 / sum s_j^2``,
  the energy reading, is available). ``coef_similarity`` -- mean pairwise cosine between the layers of a group,
  each layer's coefficients of all its templated modules flattened and concatenated.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.recast.surgery import RESNET_STAGES, RecastPlan


def feature_points(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are compared: ViT blocks, ResNet stages."""
    if family == "vit":
        return [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    return [(s, getattr(model, s)) for s in RESNET_STAGES]


@torch.no_grad()
def _run_with_features(model: nn.Module, family: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    feats: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in feature_points(model, family):

        def hook(_mod, _inp, out, name=name):
            f = out.float()
            # ResNet: spatial average per channel; ViT: the whole token tensor, flattened.
            feats[name] = f.mean(dim=(2, 3)) if f.dim() == 4 else f.flatten(1)

        hooks.append(m.register_forward_hook(hook))
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out.float(), feats


@torch.no_grad()
def output_similarity(original: nn.Module, recon: nn.Module, family: str, x: torch.Tensor) -> dict:
    """Per-block feature cosine, logits cosine and top-1 agreement on batch ``x`` (both models in eval mode)."""
    original.eval()
    recon.eval()
    out_a, fa = _run_with_features(original, family, x)
    out_b, fb = _run_with_features(recon, family, x)
    feature_cos = {k: float(F.cosine_similarity(fa[k], fb[k], dim=1).mean()) for k in fa}
    return {
        "feature_cosine": feature_cos,
        "feature_cosine_min": min(feature_cos.values()),
        "feature_cosine_mean": sum(feature_cos.values()) / len(feature_cos),
        "logits_cosine": float(F.cosine_similarity(out_a.flatten(1), out_b.flatten(1), dim=1).mean()),
        "top1_agreement": float((out_a.argmax(1) == out_b.argmax(1)).float().mean()),
        "batch_size": int(x.shape[0]),
    }


def template_frobenius(templates: torch.Tensor) -> float:
    """Appendix A.3: ``1 / (n (n - 1)) * sum over pairs i < j of ||T_i - T_j||_F`` (0 for a single template)."""
    n = templates.shape[0]
    if n < 2:
        return 0.0
    flat = templates.reshape(n, -1).double()
    total = sum(float((flat[i] - flat[j]).norm()) for i, j in combinations(range(n), 2))
    return total / (n * (n - 1))


def singular_value_entropy(templates: torch.Tensor, power: int = 1) -> float:
    """Appendix A.3: mean over templates of the entropy (nats) of ``p_i = s_i^power / sum_j s_j^power``.

    ``power=1`` (default) reads "entropy of singular values" literally; ``power=2`` normalises the energies.
    Singular values come from the eigenvalues of the smaller Gram matrix (a batched matmul plus a small symmetric
    eigensolve), several times faster on CPU than a full SVD of every template.
    """
    if power not in (1, 2):
        raise ValueError(f"entropy power must be 1 or 2, got {power}")
    flat = templates.reshape(templates.shape[0], templates.shape[1], -1).float()
    gram = flat @ flat.transpose(1, 2) if flat.shape[1] <= flat.shape[2] else flat.transpose(1, 2) @ flat
    s = torch.linalg.eigvalsh(gram.double()).clamp_min(0).sqrt() ** power
    p = s / s.sum(dim=1, keepdim=True).clamp_min(1e-300)
    return float((-(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)).mean())


def coefficient_similarity(plan: RecastPlan, coefficients: dict[str, torch.Tensor]) -> dict[int, float]:
    """Per group: mean pairwise cosine between layers' concatenated coefficients (NaN-free; 1-layer groups skipped)."""
    per_layer: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for b in plan.banks:
        for m, layer in zip(b.modules, b.layers):
            per_layer[b.group][layer].append(coefficients[m].flatten().double())
    out = {}
    for g, layers in sorted(per_layer.items()):
        vecs = [torch.cat(v) for _, v in sorted(layers.items())]
        if len(vecs) < 2 or len({v.numel() for v in vecs}) != 1:
            continue
        sims = [float(F.cosine_similarity(a, b, dim=0)) for a, b in combinations(vecs, 2)]
        out[g] = sum(sims) / len(sims)
    return out


def diversity(plan: RecastPlan, templates: dict[str, torch.Tensor], coefficients: dict[str, torch.Tensor]) -> dict:
    """Appendix A.3 metrics per bank and averaged per group."""
    banks = {
        b.key: {
            "group": b.group,
            "kind": b.kind,
            "frobenius": template_frobenius(templates[b.key]),
            "entropy": singular_value_entropy(templates[b.key]),
        }
        for b in plan.banks
    }
    coef = coefficient_similarity(plan, coefficients)
    groups: dict[int, dict] = {}
    for g in sorted({b.group for b in plan.banks}):
        members = [v for v in banks.values() if v["group"] == g]
        groups[g] = {
            "frobenius": sum(v["frobenius"] for v in members) / len(members),
            "entropy": sum(v["entropy"] for v in members) / len(members),
            "coef_similarity": coef.get(g),
        }
    return {"banks": banks, "groups": {str(g): v for g, v in groups.items()}}


def weight_summary(cosines: dict[str, float]) -> dict:
    vals = list(cosines.values())
    return {
        "per_module": cosines,
        "min": min(vals),
        "mean": sum(vals) / len(vals),
        "worst": min(cosines, key=cosines.get),
    }
