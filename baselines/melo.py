"""MeLo (Zhu et al., ISBI 2024): rank-1 LoRA on the Q and V slices of every ViT block's fused qkv.

MeLo is LoRA restricted to the query and value projections, as in JamesQFreeman/LoRA-ViT (the official ViT code):
separate A/B pairs for the Q and V rows of timm's fused ``qkv`` (K rows untouched), A kaiming-uniform(a=sqrt 5),
B zero, update scaled by the integer ``alpha // r`` with alpha 4 (LoRA-ViT's default since commit 0acf2ef; the
RECAST authors' RECAST+MeLo, adapters/RECAST+MeLo.py: r=1, alpha=4, scale 4). PEFT cannot restrict LoRA to slices
of a fused qkv (it would adapt K too), hence our own layer. Per task on ViT-S with r=1:
12 blocks * 2 slices * (384 + 384) = 18,432 parameters = 8.4e-4 P (Table 2: 8e-4 P).

Where X goes in ``recast+melo``: with RECAST's default ``target=mlp`` MeLo adapts the plain qkv, beside RECAST, as
the authors' RECAST+MeLo does (RECAST on the MLP, LoRA on the plain qkv).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from baselines.lora import LoRA, LoRAConfig
from recast_bench.engine.method import MethodConfig
from recast_bench.registry import METHODS


@dataclass
class MeloConfig(LoRAConfig):
    """MeLo defaults: RECAST paper section 3 ("MeLo (Q,V matrices)", rank 1); alpha 4 from LoRA-ViT / the authors."""

    rank: int = 1
    """RECAST paper section 3: "LoRA methods used rank=1"."""
    alpha: float = 4.0
    """Scale alpha // r = 4: LoRA-ViT default alpha 4 (since 0acf2ef); authors' RECAST+MeLo r=1, alpha=4."""
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    """RECAST paper section 3: "MeLo (Q,V matrices)"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if set(self.targets) - {"q", "k", "v"}:
            raise ValueError(f"melo adapts attention slices only (q, k, v); got targets {self.targets}; use lora")


@METHODS.register("melo")
class Melo(LoRA):
    Config: ClassVar[type[MethodConfig]] = MeloConfig
