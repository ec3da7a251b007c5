"""Backbones: build by name, load local weights safely. Importing registers every backbone."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from recast_bench.backbones import resnet as _resnet  # noqa: F401  (registers)
from recast_bench.backbones import vit as _vit  # noqa: F401  (registers)
from recast_bench.backbones.registry import BackboneSpec
from recast_bench.backbones.weights import find_default_weights, load_into, load_state_dict
from recast_bench.errors import UserError
from recast_bench.registry import BACKBONES

__all__ = ["BackboneSpec", "build_backbone", "get_spec", "num_features"]


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES.get(name)


def num_features(backbone: nn.Module) -> int:
    return int(backbone.num_features)  # type: ignore[arg-type]


def build_backbone(
    name: str, weights: str | None = None, weights_dir: str | Path = "data/weights", allow_random_init: bool = False
) -> tuple[nn.Module, BackboneSpec, str | None]:
    """Build backbone ``name`` and load its weights from a local file.

    Returns ``(module, spec, weights_path_or_None)``. With no file given, ``<weights_dir>/<name>.*`` is used;
    when that is absent too, random init is allowed only with ``allow_random_init``, otherwise the error says
    what to put where.
    """
    spec = get_spec(name)
    model = spec.build()
    path = Path(weights) if weights else find_default_weights(weights_dir, name)
    if weights and not Path(weights).is_file():
        raise UserError(f"weights file {weights} not found (backbone {name}: {spec.source})")
    if path is None:
        if not allow_random_init:
            raise UserError(
                f"no weights for backbone {name}: put {spec.source} at {Path(weights_dir) / (name + '.safetensors')} "
                f"(or .pth), pass backbone.weights=FILE, or backbone.allow_random_init=true"
            )
        return model, spec, None
    load_into(model, load_state_dict(path), str(path), ignore_prefixes=spec.ignore_prefixes)
    return model, spec, str(path)
