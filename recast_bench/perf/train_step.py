"""Training-step time of ``recast`` against full fine-tuning, ``melo`` and PEFT LoRA, side by side.

Every contestant is a copy of the same seeded ViT with the same batch, set up as the engine sets it up; a step is
the engine's own step (``engine/step.py``: its BatchNorm policy, the method's loss and hooks, the optimizer step
over the trainable parameters only).
Steps run round-robin and each contestant's median is kept; ratios are ``recast`` / other.
"""

from __future__ import annotations

from typing import Any

import torch

from recast_bench.perf.common import error_reason, interleaved, median, unavailable
from recast_bench.perf.config import PerfConfig
from recast_bench.perf.models import (
    PEFT_LORA,
    count_task_params,
    engine_optimizer,
    engine_step,
    engine_trainable,
    method_model,
    peft_lora_model,
    seeded_backbone,
)

OTHERS = ("finetune", "melo", PEFT_LORA)


def train_step_figures(cfg: PerfConfig, cache_dir: str) -> dict[str, Any]:
    """Median seconds per training step of each contestant and ``recast``'s ratios to the others."""
    from recast_bench.registry import METHODS, load_all

    load_all()
    batch, seed = cfg.train_batch, cfg.seed
    backbone, spec, _ = seeded_backbone(cfg.train_backbone, seed, cfg.weights_dir)
    size = cfg.image_size or spec.image_size
    contestants: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in ("recast", *OTHERS):
        try:
            if name == PEFT_LORA:
                model, method = peft_lora_model(backbone)
            elif name not in METHODS:
                missing[name] = unavailable(f"method {name!r} is not registered in this checkout")
                continue
            else:
                model, method = method_model(name, backbone, spec, cache_dir, seed, cfg.method_overrides())
            model.train()
            trainable = engine_trainable(model, method)
            step = engine_step(model, method, trainable)
            contestants[name] = (model, method, engine_optimizer(model, method, trainable), trainable, step)
        except Exception as e:  # noqa: BLE001
            missing[name] = unavailable(error_reason(e))
    del backbone
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    fns = {n: (lambda c=c: c[4].run(c[2], x, y)) for n, c in contestants.items()}
    samples = interleaved(fns, cfg.train_warmup, cfg.train_repeats) if fns else {}
    med: dict[str, Any] = {n: median(s) for n, s in samples.items()} | missing
    params = {n: count_task_params(c[0], c[1]) for n, c in contestants.items()} | missing
    trained = {n: sum(p.numel() for p in c[3].values()) for n, c in contestants.items()} | missing
    ratios: dict[str, Any] = {}
    for other in OTHERS:
        if isinstance(med.get("recast"), float) and isinstance(med.get(other), float):
            ratios[f"recast/{other}"] = med["recast"] / med[other]
        else:
            why = med.get("recast") if not isinstance(med.get("recast"), float) else med.get(other)
            ratios[f"recast/{other}"] = why if isinstance(why, str) else unavailable("not measured")
    return {
        "backbone": cfg.train_backbone,
        "batch": batch,
        "image_size": size,
        "warmup": cfg.train_warmup,
        "repeats": cfg.train_repeats,
        "median_s": med,
        "min_s": {n: min(s) for n, s in samples.items()},
        "images_per_s": {n: batch / v for n, v in med.items() if isinstance(v, float)},
        "task_params": params,
        "trained_params_incl_head": trained,
        "ratio": ratios,
    }
