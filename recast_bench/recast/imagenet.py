"""Classifier heads for reconstruction checks, and the ImageNet-1k top-1 comparison of paper Table 6.

Our backbones are built headless (every task gets its own head). To compare the original and the reconstructed
model on ImageNet, the pretrained classifier (timm ``head.*``, torchvision ``fc.*``) is read back from the weights
file and attached. The validation folder uses the ImageFolder layout ``DIR/<wnid>/*.JPEG``; sorted wnids are the
standard 1000-class index order, so folder index == logit index.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from recast_bench.errors import UserError

HEAD_KEYS = {"vit": "head", "resnet": "fc"}


def attach_classifier(
    model: nn.Module, family: str, state: dict[str, torch.Tensor] | None, num_classes: int = 1000, seed: int = 0
) -> bool:
    """Give ``model`` its classifier: from ``state`` (``head.*``/``fc.*``) if present, else a seeded random one.

    Returns True when the pretrained classifier was loaded.
    """
    prefix = HEAD_KEYS[family]
    w, b = (state or {}).get(f"{prefix}.weight"), (state or {}).get(f"{prefix}.bias")
    if w is not None and w.dim() == 2 and w.shape[1] == model.num_features:
        num_classes = int(w.shape[0])
    else:
        w = None
    head = nn.Linear(int(model.num_features), num_classes)
    ref = next(model.parameters())
    with torch.no_grad():
        if w is not None:
            head.weight.copy_(w)
            if b is not None:
                head.bias.copy_(b)
        else:
            g = torch.Generator().manual_seed(seed)
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.02)
            head.bias.zero_()
    head = head.to(ref.device, ref.dtype)
    if family == "vit":
        model.reset_classifier(num_classes)
        model.head = head
    else:
        model.fc = head
    return w is not None


def eval_transform(model: nn.Module, family: str, image_size: int):
    """The backbone's evaluation preprocessing at ``image_size``: timm's data config for ViTs (augreg: mean 0.5,
    bicubic, crop 0.9), torchvision's resize-256/crop-224 with ImageNet statistics for ResNets."""
    from torchvision import transforms as T

    if family == "vit":
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({}, model=model)
        cfg["input_size"] = (3, image_size, image_size)
        return create_transform(**cfg, is_training=False)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return T.Compose(
        [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)]
    )


def imagenet_loader(root: str | Path, transform, batch_size: int, num_classes: int, limit: int | None = None):
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ImageNet val folder {root} not found")
    try:
        ds = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"{root} is not an ImageFolder (DIR/<wnid>/*.JPEG): {e}") from None
    if len(ds.classes) != num_classes:
        raise UserError(
            f"{root} has {len(ds.classes)} class folders but the classifier has {num_classes} outputs; "
            "the folder must hold one sub-folder per class (ImageNet-1k val: 1000 wnids)"
        )
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def compare_top1(original: nn.Module, recon: nn.Module, loader, device: str = "cpu") -> dict:
    """Top-1 of both models and their agreement over ``loader``."""
    original.eval()
    recon.eval()
    correct_a = correct_b = agree = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        pa, pb = original(x).argmax(1), recon(x).argmax(1)
        correct_a += int((pa == y).sum())
        correct_b += int((pb == y).sum())
        agree += int((pa == pb).sum())
        total += int(y.numel())
    if total == 0:
        raise UserError("the ImageNet val folder holds no images")
    return {
        "images": total,
        "top1_original": correct_a / total,
        "top1_reconstructed": correct_b / total,
        "top1_agreement": agree / total,
    }
