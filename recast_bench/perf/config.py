"""What ``recast-bench perf`` measures and how long it may take: the default run and the quick (test) run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PerfConfig:
    """Sizes and repeat counts. The default fits in about 5 minutes on 2 idle CPU cores."""

    mimic_backbones: list[str] = field(default_factory=lambda: ["vit_small", "vit_base", "resnet34"])
    random_iters_cap: dict[str, int] = field(
        default_factory=lambda: {"vit_small": 25, "vit_base": 10, "resnet34": 25, "default": 20}
    )
    """Iteration cap of the paper's random-init mimicry (paper: ViT 1000, ResNet 3000); time per iteration and
    the projected full-count time are reported instead."""
    target_vit: str = "vit_small"
    """Backbone whose figures are checked against the ViT targets (mimicry, step ratio, inference, switch, size)."""
    target_resnet: str = "resnet34"
    train_backbone: str = "vit_small"
    train_batch: int = 16
    train_warmup: int = 1
    train_repeats: int = 5
    image_size: int | None = None
    """``None``: the backbone's own (224 for ViT-S)."""
    infer_batch: int = 8
    infer_warmup: int = 1
    infer_repeats: int = 21
    switch_repeats: int = 20
    size_backbones: list[str] = field(default_factory=lambda: ["vit_small", "resnet34"])
    data_images: int = 128
    data_image_size: int = 224
    data_workers: int = 2
    data_batch: int = 32
    data_epochs: int = 2
    recast_groups: int | None = None
    """RECAST's G for ViTs (mimicry figures and every ``recast`` model); ``None``: the method's default (6)."""
    threads: int | None = None
    """torch intra-op threads while measuring; ``None``: torch's default (one per core)."""
    seed: int = 0
    weights_dir: str = "data/weights"
    """Local pretrained weights are used when present there; otherwise seeded random weights."""

    @classmethod
    def quick(cls) -> PerfConfig:
        """Tiny backbones and few repeats: every figure is produced in seconds (tests, smoke checks)."""
        return cls(
            mimic_backbones=["vit_tiny", "resnet_tiny"],
            random_iters_cap={"default": 5},
            target_vit="vit_tiny",
            target_resnet="resnet_tiny",
            train_backbone="vit_tiny",
            train_batch=4,
            train_repeats=2,
            infer_batch=4,
            infer_repeats=3,
            switch_repeats=5,
            size_backbones=["vit_tiny", "resnet_tiny"],
            data_images=8,
            data_image_size=32,
            data_workers=0,
            data_batch=4,
            data_epochs=1,
            recast_groups=2,  # vit_tiny has 4 blocks
        )

    def method_overrides(self) -> dict[str, dict[str, Any]]:
        """Per-method config overrides applied to every model the figures build.

        RECAST's speed and size figures are measured on the SVD-init row: its reconstruction is exact (so the
        "before tuning" logits must equal the plain backbone's) and it skips the paper's 1000-iteration mimicry,
        which would dominate a CPU run. Speed and sizes do not depend on how the templates were initialised; the
        paper's mimicry is timed separately (``mimicry`` figures).
        """
        recast: dict[str, Any] = {"variant": "svd"}
        if self.recast_groups is not None:
            recast["groups"] = self.recast_groups
        return {"recast": recast}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
