"""timm Vision Transformers: ViT-S/B/L at 224 (paper), DINO ViT-S/16, and a tiny ViT for tests and the demo."""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from recast_bench.backbones.registry import BackboneSpec
from recast_bench.registry import BACKBONES


def _timm(name: str) -> nn.Module:
    # pretrained=False: nothing is fetched from a hub; local weights are loaded by build_backbone.
    return timm.create_model(name, pretrained=False, num_classes=0)


def tiny_vit() -> nn.Module:
    """Same block structure as ViT-S (fused qkv, proj, fc1/fc2 MLP, cls token), just small."""
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, mlp_ratio=4.0, num_classes=0
    )


_SOURCE = "timm {0} weights (model.safetensors from the timm/{0} hub repo)"
for _name, _timm_name in (
    ("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    ("vit_base", "vit_base_patch16_224.augreg_in21k_ft_in1k"),
    ("vit_large", "vit_large_patch16_224.augreg_in21k_ft_in1k"),
    ("dino_small", "vit_small_patch16_224.dino"),
):
    BACKBONES.register(_name)(
        BackboneSpec(
            name=_name,
            family="vit",
            image_size=224,
            build=(lambda n=_timm_name: _timm(n.split(".")[0])),
            source=_SOURCE.format(_timm_name),
        )
    )

BACKBONES.register("vit_tiny")(
    BackboneSpec(
        name="vit_tiny",
        family="vit",
        image_size=32,
        build=tiny_vit,
        source="`recast-bench pretrain --backbone vit_tiny`",
    )
)
