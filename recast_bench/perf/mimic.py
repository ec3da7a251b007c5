"""Neural Mimicry cost and quality per backbone: seconds, peak memory, min/mean weight cosine.

Both initialisations run on the paper's layout (RECAST defaults: ViT MLP with G=6, n=2, K=2; ResNet blocks 1.. of
each stage): ``svd`` (ours, closed form then refinement) and ``random`` (the paper's kaiming + orthogonal start).
The random start needs the paper's 1000 (ViT) / 3000 (ResNet) iterations, too slow for a 5-minute CPU run, so it is
capped; the cap, the seconds per iteration and the projected time of the paper's full count are recorded.
``neural_mimicry`` is called directly, so no cache is read or written while timing.
"""

from __future__ import annotations

from typing import Any

from recast_bench.perf.common import PeakRSS, error_reason, unavailable
from recast_bench.perf.models import seeded_backbone

PAPER_TABLE5 = {"vit_small": (37.4, 0.3), "vit_base": (102.0, 1.2), "vit_large": (245.0, 4.5)}
"""Paper Table 5 (RTX8000 GPU, 1000 iterations): seconds, GB."""


def mimic_one(
    name: str,
    init: str,
    iters_cap: int | None,
    seed: int,
    weights_dir: str,
    device: str = "cpu",
    groups: int | None = None,
) -> dict:
    """Run Neural Mimicry once on backbone ``name`` and summarise time, memory and reconstruction."""
    from recast_bench.recast.mimicry import PAPER, MimicConfig, neural_mimicry, reconstruct, weight_cosines
    from recast_bench.recast.surgery import RecastSpec, make_plan, target_weights

    backbone, spec, path = seeded_backbone(name, seed, weights_dir)
    plan = make_plan(backbone, spec.family, RecastSpec() if groups is None else RecastSpec(groups=groups))
    targets = {k: v.detach().clone() for k, v in target_weights(backbone, plan).items()}
    del backbone
    paper_iters = PAPER[spec.family][2]
    cfg = MimicConfig(init=init, iters=iters_cap if init == "random" else None, seed=seed, device=device)
    with PeakRSS() as mem:
        result = neural_mimicry(targets, plan, cfg)
    cos = weight_cosines(targets, reconstruct(plan, result.templates, result.coefficients))
    out: dict[str, Any] = {
        "weights": path or "random",
        "modules": len(cos),
        "seconds": round(result.seconds, 3),
        "peak_rss_mb": mem.value(),
        "min_cosine": min(cos.values()),
        "mean_cosine": sum(cos.values()) / len(cos),
        "modules_ge_0.9999": sum(c >= 0.9999 for c in cos.values()),
        "iters_run": result.iters_run,
        "iters_paper": paper_iters,
    }
    if init == "random":
        per_iter = result.seconds / max(1, result.iters_run)
        out |= {"iters_cap": iters_cap if iters_cap is not None else paper_iters, "s_per_iter": per_iter}
        out["projected_paper_s"] = per_iter * paper_iters
    return out


def mimicry_figures(
    backbones: list[str], random_caps: dict[str, int], seed: int, weights_dir: str, groups: int | None = None
) -> dict:
    """``{backbone: {"svd": {...}, "random": {...}}}``; a failure becomes an ``unavailable`` string."""
    out: dict[str, Any] = {}
    for name in backbones:
        out[name] = {}
        for init in ("svd", "random"):
            try:
                cap = random_caps.get(name, random_caps.get("default"))
                out[name][init] = mimic_one(name, init, cap, seed, weights_dir, groups=groups)
            except Exception as e:  # noqa: BLE001 (a missing piece of the project must not lose the other figures)
                out[name][init] = unavailable(error_reason(e))
    return out
