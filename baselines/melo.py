"""MeLo (Zhu et al., ISBI 2024): rank-1 LoRA on the Q and V slices of every ViT block's fused qkv.

MeLo is LoRA restricted to the query and value projections, as in JamesQFreeman/LoRA-ViT (the official ViT code):
separate A/B pairs for the Q and V rows of timm's fused ``qkv`` (K rows untouched), A kaiming-uniform(a=sqrt 5),
B zero, no scaling (``alpha = r``). PEFT cannot restrict LoRA to slices of a fused qkv (it would adapt K too), hence
our own layer. Per task on ViT-S with r=1: 12 blocks * 2 slices * (384 + 384) = 18,432 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from baselines.lora import LoRA, LoRAConfig
from recast_bench.engine.method import MethodConfig
from recast_bench.registry import METHODS


@dataclass
class MeloConfig(LoRAConfig):
    """MeLo defaults: RECAST paper section 3 ("MeLo (Q,V matrices)", rank 1); LoRA-ViT: unscaled (alpha = r)."""

    rank: int = 1
    alpha: float = 1.0
    targets: list[str] = field(default_factory=lambda: ["q", "v"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if set(self.targets) - {"q", "k", "v"}:
            raise ValueError(f"melo adapts attention slices only (q, k, v); got targets {self.targets}; use lora")


@METHODS.register("melo")
class Melo(LoRA):
    name: ClassVar[str] = "melo"
    Config: ClassVar[type[MethodConfig]] = MeloConfig
