"""GPU figures, only when CUDA is present: Neural Mimicry of ViT-S/B/L beside the paper's Table 5, the
training throughput of ``recast`` on ViT-S, and the training throughput ceiling of the plain backbones
(:func:`training_ceiling`, also used by ``make gpu-check``). Without a GPU the section is an explicit ``unavailable``.

**Fraction of the bf16 peak.** ``images/s x training FLOPs per image / the card's dense bf16 peak``. FLOPs per image
are counted (:func:`flops_per_image`, ``torch.utils.flop_counter``: 2 FLOPs per multiply-accumulate, so timm's
"GMACs" are half of them) over one image's forward, and its forward plus backward with every parameter training (the
ceiling's step): ViT-S/16 at 224 px is 9.20 GFLOP forward and 27.5 training (about 3x forward: the backward does an
input-gradient and a weight-gradient GEMM per forward GEMM), ResNet-34 7.33 and 21.7. Each bench row's own step
(frozen weights skip their weight-gradient GEMM) is counted in :mod:`recast_bench.perf.flops`. The peak is the
datasheet's dense (not 2:4-sparse) bf16 tensor-core figure of the card, by name (:data:`BF16_PEAK_TFLOPS`): H100 SXM
and H200 989 TFLOP/s; an unlisted card's fraction is ``unknown``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.engine.device import autocast
from recast_bench.perf.common import PeakCuda, error_reason, steady_img_s, unavailable
from recast_bench.perf.mimic import PAPER_TABLE5, mimic_one
from recast_bench.perf.models import engine_optimizer, engine_step, engine_trainable, method_model, seeded_backbone

BF16_PEAK_TFLOPS = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),
    (r"H200.*NVL", 835.0),
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"B200", 2250.0),
)
"""Dense bf16 tensor-core peak by device name (NVIDIA datasheets, half their with-sparsity figures); first match."""


def bf16_peak_tflops(name: str | None) -> float | None:
    """The dense bf16 peak of the card called ``name`` (``torch.cuda.get_device_name``), ``None`` when not listed."""
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if name and re.search(pattern, name):
            return tflops
    return None


def flops_per_image(backbone: nn.Module, image_size: int) -> dict[str, float]:
    """GFLOP per image of the forward and of the training step (forward + backward, every parameter trains), counted
    over a batch of 2 on a copy on the meta device (no memory, no compute), with torch's counter as
    :func:`recast_bench.perf.flops.counting` corrects it (grouped convolutions' weight gradients). Each bench row's own
    step, frozen weights and per-step work included, is in :mod:`recast_bench.perf.flops`."""
    from recast_bench.perf.flops import counting

    model = copy.deepcopy(backbone).to("meta").train()
    x = torch.randn(2, 3, image_size, image_size, device="meta")
    with counting() as fwd:
        model(x)
    with counting() as train:
        model(x).float().sum().backward()
    return {"forward_gflop": fwd.get_total_flops() / 2e9, "train_gflop": train.get_total_flops() / 2e9}


def fraction_of_peak(img_s: float | None, train_gflop: float | None, gpu: str | None) -> float | str | None:
    """``img_s x train_gflop / peak``; ``"unknown"`` for a card missing from the table."""
    peak = bf16_peak_tflops(gpu)
    if peak is None:
        return "unknown"
    if not img_s or not train_gflop:
        return None
    return img_s * train_gflop / (peak * 1e3)


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
            step = lambda m=mode, xm=xm: _train_step(model, opt, xm, y, m, device)  # noqa: E731
            out[mode] = steady_img_s(step, batch, steps, warmup, device)
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


def ceiling_row(
    backbone: nn.Module, spec: Any, device: torch.device, batch: int, steps: int = 20, warmup: int = 5
) -> dict[str, Any]:
    """:func:`training_ceiling` of ``backbone`` per mode, its batch and FLOPs per image, and on CUDA the fraction of
    the card's bf16 peak (``None`` elsewhere): one ceiling figure, for ``perf`` and ``gpu-check`` alike."""
    flops = flops_per_image(backbone, spec.image_size)
    img_s = training_ceiling(
        backbone, device, batch, spec.image_size, steps, warmup, channels_last_ok=spec.family == "resnet"
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = {m: fraction_of_peak(v, flops["train_gflop"], gpu) if gpu else None for m, v in img_s.items()}
    return img_s | {"batch": batch, **flops, "fraction_of_bf16_peak": peak}


def gpu_figures(seed: int, cache_dir: str, weights_dir: str, batch: int = 64, steps: int = 20) -> dict[str, Any] | str:
    if not torch.cuda.is_available():
        return unavailable("no CUDA device in this session; run `recast-bench perf` on a GPU machine")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "mimicry": {}}
    for name, (paper_s, paper_gb) in PAPER_TABLE5.items():
        for init in ("svd", "random"):
            try:
                with PeakCuda() as peak:
                    r = mimic_one(name, init, None, seed, weights_dir, device="cuda")
                r["peak_cuda_gb"] = peak.mb / 1024
                r |= {"paper_s": paper_s, "paper_gb": paper_gb}
                out["mimicry"][f"{name}/{init}"] = r
            except Exception as e:  # noqa: BLE001
                out["mimicry"][f"{name}/{init}"] = unavailable(error_reason(e))
    try:
        backbone, spec, _ = seeded_backbone("vit_small", seed, weights_dir)
        model, method = method_model("recast", backbone, spec, cache_dir, seed)
        model = model.cuda().train()
        trainable = engine_trainable(model, method)
        opt, step = engine_optimizer(model, method, trainable), engine_step(model, method, trainable)
        x = torch.randn(batch, 3, spec.image_size, spec.image_size, device="cuda")
        y = torch.randint(0, 10, (batch,), device="cuda")
        out["recast_vit_small_train_img_s"] = steady_img_s(lambda: step.run(opt, x, y), batch, steps, 3, "cuda")
        out["train_batch"] = batch
    except Exception as e:  # noqa: BLE001
        out["recast_vit_small_train_img_s"] = unavailable(error_reason(e))
    for name, batch in (("vit_small", 128), ("resnet34", 64)):
        try:
            backbone, spec, _ = seeded_backbone(name, seed, weights_dir)
            out[f"ceiling_{name}_img_s"] = ceiling_row(backbone, spec, torch.device("cuda"), batch)
        except Exception as e:  # noqa: BLE001
            out[f"ceiling_{name}_img_s"] = unavailable(error_reason(e))
    return out
