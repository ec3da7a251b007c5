"""Inference cost of a RECAST task model with cached generated weights, against the plain timm model.

Both models share the seeded backbone's weights and the same head; the RECAST one carries a task's coefficients
(the mimicked ones, perturbed as training would). A third contestant turns the weight cache off, to show what the
cache buys. Forward passes run in ``torch.inference_mode`` (as the engine evaluates), round-robin, medians kept.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from recast_bench.engine.model import TaskModel
from recast_bench.perf.common import interleaved, median
from recast_bench.perf.models import method_model, seeded_backbone


def deploy_models(backbone_name: str, seed: int, cache_dir: str, weights_dir: str, overrides: dict | None = None):  # noqa: ANN201
    """``(plain TaskModel, RECAST TaskModel, recast method, spec)`` with identical heads, both in eval mode."""
    backbone, spec, _ = seeded_backbone(backbone_name, seed, weights_dir)
    rec, method = method_model("recast", backbone, spec, cache_dir, seed, overrides)
    plain = TaskModel(backbone, int(backbone.num_features))
    plain.add_head(0, rec.heads["t0"].out_features)
    plain.heads.load_state_dict(rec.heads.state_dict())
    return plain.eval().requires_grad_(False), rec.eval().requires_grad_(False), method, spec


def perturb_coefficients(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Stand-in for a trained task: every coefficient moved by ``scale`` times its own RMS (seeded)."""
    from recast_bench.recast.surgery import reparam_modules

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in reparam_modules(model).values():
            c = m.coefficients
            c.add_(torch.randn(c.shape, generator=g) * scale * c.pow(2).mean().sqrt())


def _cache_hit_ms(model: TaskModel, rounds: int = 200) -> float:
    """Milliseconds to fetch every cached generated weight once, i.e. the per-forward cost of the cache."""
    import time

    from recast_bench.recast.surgery import reparam_modules

    layers = list(reparam_modules(model).values())
    with torch.inference_mode():
        for m in layers:
            m.weight  # noqa: B018 (fill the cache)
        t0 = time.perf_counter()
        for _ in range(rounds):
            for m in layers:
                m.weight  # noqa: B018
    return 1000.0 * (time.perf_counter() - t0) / rounds


def inference_figures(
    plain: TaskModel, rec: TaskModel, batch: int, image_size: int, warmup: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Median forward seconds of the plain model, RECAST with and without the weight cache, and their ratios."""
    from recast_bench.recast.surgery import reparam_modules

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        # Mimicry reproduces the backbone, so before any task tuning the two models must agree.
        diff = float((plain(x[:2], 0) - rec(x[:2], 0)).abs().max())
    perturb_coefficients(rec, 0.05, seed)
    uncached = copy.deepcopy(rec)
    for m in reparam_modules(uncached).values():
        m.cache_weight = False

    def fwd(model: TaskModel):  # noqa: ANN202
        def f() -> None:
            with torch.inference_mode():
                model(x, 0)

        return f

    samples = interleaved(
        {"plain": fwd(plain), "recast_cached": fwd(rec), "recast_uncached": fwd(uncached)}, warmup, repeats
    )
    med = {n: median(s) for n, s in samples.items()}
    overhead_ms = _cache_hit_ms(rec)
    best = {n: min(s) for n, s in samples.items()}
    return {
        "batch": batch,
        "image_size": image_size,
        "warmup": warmup,
        "repeats": repeats,
        "median_s": med,
        "ratio_cached": med["recast_cached"] / med["plain"],
        "ratio_uncached": med["recast_uncached"] / med["plain"],
        # Minimums are the least disturbed samples; on a shared, loaded machine they are the steadier estimate.
        "min_s": best,
        "ratio_cached_min": best["recast_cached"] / best["plain"],
        "max_abs_logit_diff_before_tuning": diff,
        # What RECAST adds to a forward once the weights are cached (cache-key checks), timed alone: it is far
        # below the noise of whole-forward timings, so it bounds the true ratio: 1 + this / plain.
        "cache_hit_overhead_ms_per_forward": overhead_ms,
        "ratio_cached_from_overhead": 1.0 + overhead_ms / 1000.0 / med["plain"],
    }
