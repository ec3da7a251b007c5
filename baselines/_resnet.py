"""Shared helpers of the ResNet baselines (Piggyback, HAT, CLR): finding layers by name and role, swapping modules.

Layers are found by their torchvision ResNet names (``conv1``, ``layerS.B.convN``, ``layerS.B.downsample.0``) and
their *role* (conv-like or linear-like), never by ``isinstance(m, nn.Conv2d)`` alone, so the same code wraps plain
layers and RECAST's generated-weight layers (``ReparamConv2d``/``ReparamLinear`` expose ``weight``, ``bias`` and
the attributes of their torch counterparts). Wrappers built on these helpers read ``base.weight`` at forward time,
because a RECAST layer generates a new weight from the current coefficients on every call.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

_BLOCK = re.compile(r"^layer\d+\.\d+$")
_BLOCK_CONV = re.compile(r"^(layer\d+\.\d+)\.conv(\d+)$")
_DOWNSAMPLE_CONV = re.compile(r"^(layer\d+\.\d+)\.downsample\.0$")


def is_conv_like(m: nn.Module) -> bool:
    """A 2-d convolution: ``nn.Conv2d`` or any module exposing a 4-d ``weight`` and the conv attributes."""
    if isinstance(m, nn.Conv2d):
        return True
    attrs = ("stride", "padding", "dilation", "groups", "out_channels", "in_channels")
    return all(hasattr(m, a) for a in attrs) and _weight_dim(m) == 4


def is_linear_like(m: nn.Module) -> bool:
    """A linear layer: ``nn.Linear`` or any module exposing a 2-d ``weight``, ``in_features`` and ``out_features``."""
    if isinstance(m, nn.Linear):
        return True
    return hasattr(m, "in_features") and hasattr(m, "out_features") and _weight_dim(m) == 2


def _weight_dim(m: nn.Module) -> int:
    w = getattr(m, "weight", None)
    return w.dim() if isinstance(w, torch.Tensor) else -1


def conv_forward(base: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``base``'s convolution (stride, padding, dilation, groups, bias) applied with another ``weight``."""
    if getattr(base, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"only zero-padded convolutions are supported, got {base.padding_mode!r}")
    return F.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)


def linear_forward(base: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``base``'s linear map (with its bias) applied with another ``weight``."""
    return F.linear(x, weight, base.bias)


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted path) of ``root`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def resnet_blocks(backbone: nn.Module) -> dict[str, nn.Module]:
    """The residual blocks (``layerS.B``) of a torchvision ResNet in forward order."""
    return {n: m for n, m in backbone.named_modules() if _BLOCK.match(n)}


def resnet_convs(
    backbone: nn.Module, stem: bool = True, downsample: bool = True, skip_1x1: bool = False
) -> dict[str, nn.Module]:
    """Convolutions of a torchvision ResNet by name, in forward order (stem, then each block's convs, downsample).

    Args:
        backbone: a torchvision ResNet (or one with identical module names, like ``resnet_tiny``).
        stem: include the 7x7 stem ``conv1``.
        downsample: include the 1x1 ``downsample.0`` projection convs.
        skip_1x1: drop every 1x1 conv (downsample projections, and a Bottleneck's conv1/conv3).
    """
    out: dict[str, nn.Module] = {}
    for name, m in backbone.named_modules():
        if not is_conv_like(m):
            continue
        if name == "conv1":
            keep = stem
        elif _BLOCK_CONV.match(name):
            keep = True
        elif _DOWNSAMPLE_CONV.match(name):
            keep = downsample
        else:
            continue
        if keep and not (skip_1x1 and tuple(_pair(m.kernel_size)) == (1, 1)):
            out[name] = m
    if not out:
        raise ValueError("found no ResNet convolutions (expected torchvision names conv1, layerS.B.convN)")
    return out


def _pair(k: int | tuple[int, ...]) -> tuple[int, ...]:
    return (k, k) if isinstance(k, int) else tuple(k)


def bn_after(conv_name: str) -> str:
    """Name of the BatchNorm that follows ``conv_name`` in a torchvision ResNet (``conv2`` -> ``bn2``)."""
    if conv_name == "conv1":
        return "bn1"
    m = _BLOCK_CONV.match(conv_name)
    if m:
        return f"{m.group(1)}.bn{m.group(2)}"
    m = _DOWNSAMPLE_CONV.match(conv_name)
    if m:
        return f"{m.group(1)}.downsample.1"
    raise ValueError(f"{conv_name!r} is not a torchvision ResNet conv name")


def batchnorms(module: nn.Module, prefix: str = "") -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm of ``module`` by qualified name (``prefix`` prepended)."""
    return {f"{prefix}{n}": m for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def bn_parameters(model: nn.Module, prefix: str = "backbone.") -> dict[str, nn.Parameter]:
    """Affine parameters of every BatchNorm under ``model.backbone``, by qualified name in ``model``."""
    out: dict[str, nn.Parameter] = {}
    for n, bn in batchnorms(model.backbone, prefix).items():
        for k, p in bn.named_parameters(recurse=False):
            out[f"{n}.{k}"] = p
    return out


def bn_buffers(model: nn.Module, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """Running statistics (and batch counters) of every BatchNorm under ``model.backbone``."""
    out: dict[str, torch.Tensor] = {}
    for n, bn in batchnorms(model.backbone, prefix).items():
        for k, b in bn.named_buffers(recurse=False):
            out[f"{n}.{k}"] = b
    return out


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached copies of ``tensors`` (e.g. the pretrained BN state every task restarts from)."""
    return {k: v.detach().clone() for k, v in tensors.items()}


def restore(tensors: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Copy ``saved`` back into ``tensors`` in place (same keys)."""
    with torch.no_grad():
        for k, v in tensors.items():
            v.copy_(saved[k].to(v.device))
