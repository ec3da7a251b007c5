"""GPU figures, only when CUDA is present: Neural Mimicry of ViT-S/B/L beside the paper's Table 5, and the
training throughput of ``recast`` on ViT-S. Without a GPU the section is an explicit ``unavailable``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from recast_bench.perf.common import error_reason, unavailable
from recast_bench.perf.mimic import PAPER_TABLE5, mimic_one
from recast_bench.perf.models import engine_optimizer, engine_trainable, method_model, seeded_backbone, train_step


def gpu_figures(seed: int, cache_dir: str, weights_dir: str, batch: int = 64, steps: int = 20) -> dict[str, Any] | str:
    if not torch.cuda.is_available():
        return unavailable("no CUDA device in this session; run `recast-bench perf` on a GPU machine")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "mimicry": {}}
    for name, (paper_s, paper_gb) in PAPER_TABLE5.items():
        for init in ("svd", "random"):
            try:
                torch.cuda.reset_peak_memory_stats()
                r = mimic_one(name, init, None, seed, weights_dir, device="cuda")
                r["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
                r |= {"paper_s": paper_s, "paper_gb": paper_gb}
                out["mimicry"][f"{name}/{init}"] = r
            except Exception as e:  # noqa: BLE001
                out["mimicry"][f"{name}/{init}"] = unavailable(error_reason(e))
    try:
        backbone, spec, _ = seeded_backbone("vit_small", seed, weights_dir)
        model, method = method_model("recast", backbone, spec, cache_dir, seed)
        model = model.cuda().train()
        opt = engine_optimizer(model, method, engine_trainable(model, method))
        x = torch.randn(batch, 3, spec.image_size, spec.image_size, device="cuda")
        y = torch.randint(0, 10, (batch,), device="cuda")
        for _ in range(3):
            train_step(model, method, opt, x, y)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, method, opt, x, y)
        torch.cuda.synchronize()
        out["recast_vit_small_train_img_s"] = batch * steps / (time.perf_counter() - t0)
        out["train_batch"] = batch
    except Exception as e:  # noqa: BLE001
        out["recast_vit_small_train_img_s"] = unavailable(error_reason(e))
    return out
