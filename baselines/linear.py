"""Linear probing: the backbone stays frozen and each task trains only its own head.

This is the "ResNet-34" / "ViT-Small" baseline row of the paper's Tables 1-2 (0 learnt backbone parameters).
"""

from __future__ import annotations

from recast_bench.engine.method import Method, MethodConfig
from recast_bench.registry import METHODS


@METHODS.register("linear")
class Linear(Method[MethodConfig]):
    """Frozen backbone, one head per task; parameter isolation is trivially exact."""

    Config = MethodConfig
    frozen_backbone_features = True
