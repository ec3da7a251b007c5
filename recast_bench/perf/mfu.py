"""The modelled model-FLOPs utilisation (MFU) of a bf16 training step on an H100, per backbone family, and its sources.

``MFU = images/s x counted training GFLOP per image / the card's dense bf16 peak``. No GPU has run this project, so
the cost model takes one MFU per backbone family from published throughputs, converted with FLOPs counted here on the
same architectures (:mod:`recast_bench.perf.flops`, its ``references``), and says how each was transferred:

* **ViT-S, compiled (15.9 %)**: NVIDIA-BioNeMo/nvSubquadratic ``benchmarks/README.md`` measured ViT-5-Small (22 M
  parameters, 224 px, 12 blocks of width 384) training on one H100 SXM in bf16 at batch 256: torch.compile (default
  mode) 15.9 % of the 989 TFLOP/s peak for the original model, 22.0 % after hand optimisations (fused RMSNorm, cuDNN
  attention, no redundant casts); eager 4.6 % and 6.6 %. Their count (~28.4 GFLOP per training image, 3x forward) is
  ours for a ViT-S/16 (27.5). We take the original model's compiled figure: timm's ViT has no hand-fused kernels, and
  our batch is 128. Eager rows (avalanche's L2P, the hooks' passes, linear's feature pass) take the optimised eager
  6.6 % (timm's fused attention has none of their original model's per-step RoPE work).
* **ResNet-34, eager (16.8 %)**, from three published throughputs: NVIDIA DeepLearningExamples' PyTorch ResNet-50
  v1.5 trains at 2,470 img/s in mixed precision on one A100 80GB (its README, pytorch-21.03 container), 19.2 % of
  the A100's 312 TFLOP/s at ResNet-50's counted 24.3 GFLOP; MLPerf Training v3.0 has Dell train ResNet-50 on 16
  H100-SXM5-80GB in 7.8 minutes and on 16 A100-SXM-80GB in 14.4 (same CPUs): an H100 does 1.85x the A100's work,
  against 3.17x its peak, so 11.2 % on an H100; timm's training benchmark (results/
  benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: AMP, channels_last, one RTX 3090) runs ResNet-34 at 2,036.5
  img/s and ResNet-50 at 1,218.0, so ResNet-34 reaches 1.50x ResNet-50's MFU on one card; we assume that ratio holds
  on an H100.
* **ResNet-34, compiled (19.3 %)**: x1.15 on the eager figure, our assumption (no source found): a ResNet step is mostly
  cuDNN convolutions, and compile fuses only the BatchNorm/ReLU/add work around them.

Evaluation is modelled at the training MFU (a forward at batch 256: no weight gradient, no optimiser). A row's time per
training image is its counted FLOPs over ``MFU x peak``: it assumes every row's step runs at its family's MFU. A
frozen-backbone step drops the weight-gradient GEMMs but not the normalisation and activation work, so rows with
fewer FLOPs than full training are modelled somewhat optimistic.
"""

from __future__ import annotations

from typing import Any

H100_BF16_TFLOPS = 989.0
"""The modelled card: H100 SXM, dense bf16 (NVIDIA datasheet, half the with-sparsity 1,979)."""
A100_BF16_TFLOPS = 312.0

VIT_COMPILED = 0.159
VIT_COMPILED_OPTIMISED = 0.220
VIT_EAGER = 0.066
RESNET50_A100_IMG_S = 2470.0
MLPERF_V30_RESNET50_MIN = {"a100": 14.4, "h100": 7.8}
TIMM_3090_IMG_S = {"resnet34": 2036.51, "resnet50": 1218.01}
RESNET_COMPILE = 1.15

SOURCES = {
    "vit": "NVIDIA-BioNeMo/nvSubquadratic benchmarks/README.md: ViT-5-Small, 1x H100 SXM, bf16, batch 256, "
    "torch.compile 15.9 % (22.0 % hand-optimised), eager 6.6 %",
    "resnet": "NVIDIA DeepLearningExamples ResNet-50 v1.5 PyTorch: 2,470 img/s AMP on 1x A100 80GB; MLPerf Training "
    "v3.0 ResNet-50 (Dell, 16 GPUs): H100 7.8 min vs A100 14.4 min; timm benchmark-train-amp-nhwc RTX 3090: "
    "ResNet-34 2,036.5 vs ResNet-50 1,218.0 img/s; compile x1.15 ours",
}


def _train(ref: dict[str, Any]) -> float:
    """Training GFLOP per image of a reference entry of the FLOP table (a published throughput's network)."""
    return float(ref["forward"] + ref["backward"])


def resnet_eager(refs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each step of the ResNet-34 eager MFU's derivation (module docstring), from the counted reference FLOPs."""
    f50, f34 = _train(refs["resnet50"]), _train(refs["resnet34"])
    a100 = RESNET50_A100_IMG_S * f50 / (A100_BF16_TFLOPS * 1e3)
    speedup = MLPERF_V30_RESNET50_MIN["a100"] / MLPERF_V30_RESNET50_MIN["h100"]
    h100_resnet50 = a100 * speedup / (H100_BF16_TFLOPS / A100_BF16_TFLOPS)
    ratio = TIMM_3090_IMG_S["resnet34"] * f34 / (TIMM_3090_IMG_S["resnet50"] * f50)
    return {"a100_resnet50": a100, "h100_over_a100": speedup, "h100_resnet50": h100_resnet50,
            "resnet34_over_resnet50": ratio, "h100_resnet34": h100_resnet50 * ratio}  # fmt: skip


def modelled_mfu(refs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{family: {"compiled": MFU, "eager": MFU}}`` of a bf16 step on one H100 SXM (module docstring)."""
    resnet = resnet_eager(refs)["h100_resnet34"]
    return {
        "vit": {"compiled": VIT_COMPILED, "eager": VIT_EAGER},
        "resnet": {"compiled": resnet * RESNET_COMPILE, "eager": resnet},
    }
