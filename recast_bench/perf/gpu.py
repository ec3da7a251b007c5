"""GPU figures, only when CUDA is present: Neural Mimicry of ViT-S/B/L beside the paper's Table 5, the
training throughput of ``recast`` on ViT-S, and the training throughput ceiling of the plain backbones
(:func:`training_ceiling`, also used by ``make gpu-check``). Without a GPU the section is an explicit ``unavailable``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.engine.device import autocast
from recast_bench.perf.common import error_reason, unavailable
from recast_bench.perf.mimic import PAPER_TABLE5, mimic_one
from recast_bench.perf.models import engine_optimizer, engine_trainable, method_model, seeded_backbone, train_step

CEILING_MODES = ("fp32", "tf32", "bf16", "bf16_channels_last")
"""fp32: full-precision matmuls; tf32: TF32 matmuls and convolutions; bf16: autocast (with TF32 for what stays fp32);
bf16_channels_last: bf16 with NHWC activations and weights (convolutional backbones only)."""


def training_ceiling(
    backbone: nn.Module,
    device: torch.device,
    batch: int,
    image_size: int,
    steps: int = 20,
    warmup: int = 5,
    channels_last_ok: bool = False,
) -> dict[str, float]:
    """Training images/s of ``backbone`` plus a linear head (all parameters train, AdamW) on random tensors already
    on ``device``, per precision mode: the ceiling no data pipeline or method overhead can beat.

    The process-wide matmul precision is restored afterwards.
    """
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    head = nn.Linear(int(backbone.num_features), 10)
    model = nn.Sequential(backbone, head).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    out: dict[str, float] = {}
    try:
        for mode in CEILING_MODES:
            if mode == "bf16_channels_last" and not channels_last_ok:
                continue
            fp32 = mode == "fp32"
            torch.set_float32_matmul_precision("highest" if fp32 else "high")
            torch.backends.cudnn.allow_tf32 = not fp32
            fmt = torch.channels_last if mode.endswith("channels_last") else torch.contiguous_format
            model.to(memory_format=fmt)
            xm = x.contiguous(memory_format=fmt)

            for _ in range(warmup):
                _train_step(model, opt, xm, y, mode, device)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                _train_step(model, opt, xm, y, mode, device)
            _sync(device)
            out[mode] = batch * steps / (time.perf_counter() - t0)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
        model.to(memory_format=torch.contiguous_format)
    return out


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, mode: str, device: torch.device
) -> None:
    opt.zero_grad(set_to_none=True)
    with autocast(device, "bf16-mixed" if mode.startswith("bf16") else None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    for name, batch in (("vit_small", 128), ("resnet34", 64)):
        try:
            backbone, spec, _ = seeded_backbone(name, seed, weights_dir)
            dev = torch.device("cuda")
            out[f"ceiling_{name}_img_s"] = training_ceiling(
                backbone, dev, batch, spec.image_size, channels_last_ok=spec.family == "resnet"
            )
        except Exception as e:  # noqa: BLE001
            out[f"ceiling_{name}_img_s"] = unavailable(error_reason(e))
    return out
