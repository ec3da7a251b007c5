"""How to rebuild each backbone with plain timm or torchvision, so an exported task loads without recast-bench.

Every backbone of the registry is a stock timm ``VisionTransformer`` or a torchvision-named ``ResNet``; the tiny ones
only change sizes. ``timm.create_model(name, **kwargs)`` lets keyword arguments override the named architecture's
sizes, so ``vit_tiny`` is ``vit_tiny_patch16_224`` at 32 px with patch 8. ``resnet_tiny`` has no stock equivalent
(neither library lets the 7x7 stem be narrower than 64 channels), so its tasks export as a torch.export program.
"""

from __future__ import annotations

from typing import Any

# backbone -> (library, constructor, size kwargs); ``num_classes`` is added per task.
ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "vit_small": ("timm", "vit_small_patch16_224", {}),
    "vit_base": ("timm", "vit_base_patch16_224", {}),
    "vit_large": ("timm", "vit_large_patch16_224", {}),
    "dino_small": ("timm", "vit_small_patch16_224", {}),
    "vit_tiny": (
        "timm",
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0},
    ),
    "resnet34": ("torchvision", "resnet34", {}),
}


def architecture(backbone: str, num_classes: int) -> dict[str, Any] | None:
    """``{"library", "constructor", "kwargs"}`` rebuilding ``backbone`` with a ``num_classes`` classifier, or None."""
    if backbone not in ARCHITECTURES:
        return None
    library, constructor, kwargs = ARCHITECTURES[backbone]
    return {"library": library, "constructor": constructor, "kwargs": {**kwargs, "num_classes": int(num_classes)}}


def build_plain(arch: dict[str, Any]):  # noqa: ANN201 (an nn.Module of timm or torchvision)
    """Build the architecture described by :func:`architecture` (random weights, nothing downloaded)."""
    if arch["library"] == "timm":
        import timm

        return timm.create_model(arch["constructor"], pretrained=False, **arch["kwargs"])
    import torchvision

    return getattr(torchvision.models, arch["constructor"])(weights=None, **arch["kwargs"])


def classifier_prefix(arch: dict[str, Any]) -> str:
    """State-dict prefix of the classifier: timm ViT ``head.``, ResNets (both libraries) ``fc.``."""
    return "fc." if "resnet" in arch["constructor"] else "head."


def snippet(arch: dict[str, Any], weights_file: str, meta_file: str) -> str:
    """The five lines that load an exported task with plain timm or torchvision."""
    if arch["library"] == "timm":
        build = 'timm.create_model(meta["constructor"], pretrained=False, **meta["kwargs"])'
        imports = "import json, timm"
    else:
        build = 'getattr(torchvision.models, meta["constructor"])(weights=None, **meta["kwargs"])'
        imports = "import json, torchvision"
    return (
        f"{imports}\n"
        "from safetensors.torch import load_file\n"
        f'meta = json.load(open("{meta_file}"))["architecture"]\n'
        f"model = {build}\n"
        f'model.load_state_dict(load_file("{weights_file}")); model.eval()\n'
    )
