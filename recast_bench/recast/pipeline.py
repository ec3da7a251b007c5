"""``recast-bench mimic`` as a plain function: backbone -> Neural Mimicry (cached) -> artifacts + report.json.

Also the one place that turns a backbone into its RECAST version from a plan and mimicry results
(:func:`recast_backbone`), used by the ``recast`` method and by :func:`load_recast_model`.
"""

from __future__ import annotations

import copy
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recast_bench.errors import UserError
from recast_bench.recast.artifacts import load_recast, mimic_cached, save_recast
from recast_bench.recast.metrics import diversity, output_similarity, weight_summary
from recast_bench.recast.mimicry import MimicConfig, MimicResult, weight_cosines
from recast_bench.recast.surgery import RecastPlan, RecastSpec, apply_plan, generated_weights, make_plan, target_weights


def recast_backbone(
    backbone: nn.Module,
    family: str,
    spec: RecastSpec,
    mimic: MimicConfig,
    cache_dir: str | Path | None,
) -> tuple[RecastPlan, MimicResult, dict[str, torch.Tensor], str]:
    """Mimic ``backbone``'s current weights (cached) and swap in the generated-weight layers, in place.

    Returns ``(plan, result, original target weights, cache key)``.
    """
    plan = make_plan(backbone, family, spec)
    targets = {k: v.clone() for k, v in target_weights(backbone, plan).items()}
    result, key = mimic_cached(targets, plan, mimic, cache_dir)
    apply_plan(backbone, plan, result.templates, result.coefficients)
    return plan, result, targets, key


def load_recast_model(backbone: nn.Module, artifact_dir: str | Path) -> RecastPlan:
    """Apply a saved artifact to a freshly built backbone of the same architecture (in place)."""
    plan, templates, coefficients, _ = load_recast(artifact_dir)
    try:
        apply_plan(backbone, plan, templates, coefficients)
    except (ValueError, KeyError, AttributeError) as e:
        raise UserError(f"RECAST artifact {artifact_dir} does not fit this backbone: {e}") from None
    return plan


@dataclass
class MimicJob:
    backbone: str
    out: str
    weights: str | None = None
    spec: RecastSpec = field(default_factory=RecastSpec)
    mimic: MimicConfig = field(default_factory=MimicConfig)
    cache_dir: str | None = "data/cache"
    weights_dir: str = "data/weights"
    imagenet_val: str | None = None
    imagenet_limit: int | None = None
    batch_size: int = 4
    image_size: int | None = None
    seed: int = 0
    plots: bool = False


def _peak_mem_mb(device: str) -> dict[str, float]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_mimic(job: MimicJob) -> dict[str, Any]:
    """Run the whole ``mimic`` subcommand; returns the report (also written to ``job.out/report.json``)."""
    from recast_bench.backbones import build_backbone
    from recast_bench.backbones.weights import load_state_dict
    from recast_bench.recast.imagenet import attach_classifier, compare_top1, eval_transform, imagenet_loader

    t0 = time.perf_counter()
    device = job.mimic.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available")
        torch.cuda.reset_peak_memory_stats()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)  # random-init backbones are reproducible, so their cache key is too
        model, spec, path = build_backbone(job.backbone, job.weights, job.weights_dir, allow_random_init=True)
    state = load_state_dict(path) if path else None
    has_head = attach_classifier(model, spec.family, state, seed=job.seed)
    if job.imagenet_val and not has_head:
        raise UserError(f"--imagenet-val needs a weights file with the classifier ({job.backbone}: {spec.source})")
    model = model.to(device).eval()
    original = copy.deepcopy(model)
    build_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    try:
        plan, result, targets, key = recast_backbone(model, spec.family, job.spec, job.mimic, job.cache_dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    mimic_s = time.perf_counter() - t1
    model.eval()
    cosines = weight_cosines(targets, generated_weights(model, plan))

    size = job.image_size or spec.image_size
    g = torch.Generator().manual_seed(job.seed)
    loader = None
    if job.imagenet_val:
        tf = eval_transform(original, spec.family, size)
        loader = imagenet_loader(
            job.imagenet_val, tf, job.batch_size, int(model_head_out(model, spec.family)), job.imagenet_limit
        )
        batch = next(iter(loader))[0].to(device)
    else:
        batch = torch.randn(job.batch_size, 3, size, size, generator=g).to(device)
    outputs = output_similarity(original, model, spec.family, batch) | {"images": int(batch.shape[0])}  # one batch
    report: dict[str, Any] = {
        "backbone": job.backbone,
        "family": spec.family,
        "weights": path,
        "classifier": "pretrained" if has_head else "random (no classifier in weights)",
        "spec": plan.spec,
        "mimicry": {
            **job.mimic.resolved(spec.family).cache_dict(),
            "from_cache": result.from_cache,
            "cache_key": key,
            "iters_run": result.iters_run,
            "initial_loss": result.history[0] if result.history else None,
            "final_loss": min(result.history) if result.history else None,
        },
        "per_task_params": plan.per_task_params(),
        "template_params": plan.template_params(),
        "banks": len(plan.banks),
        "modules": len(plan.modules()),
        "weight_cosine": weight_summary(cosines),
        "outputs": outputs,
        "diversity": diversity(plan, result.templates, result.coefficients),
    }
    if loader is not None:
        report["imagenet"] = compare_top1(original, model, loader, device)
    out = Path(job.out)
    save_recast(
        out, plan, result.templates, result.coefficients, {"mimicry": report["mimicry"], "backbone": job.backbone}
    )
    if job.plots:
        from recast_bench.recast.plots import plot_report

        report["plots"] = [str(p) for p in plot_report(report, out / "plots")]
    report["seconds"] = {"build": build_s, "mimicry": mimic_s, "total": time.perf_counter() - t0}
    report["memory"] = _peak_mem_mb(device)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def model_head_out(model: nn.Module, family: str) -> int:
    head = model.head if family == "vit" else model.fc
    return int(head.out_features)
