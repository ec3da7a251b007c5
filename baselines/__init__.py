"""Baseline methods, one file each, registered by name on import.

Lightning-engine methods subclass ``recast_bench.engine.method.Method``; Avalanche strategies are wrapped by
``baselines/avalanche_*``. Importing this package registers all of them (no folder scanning).
"""

from baselines import (  # noqa: F401  # noqa: F401  (ResNet baselines; piggyback also on ViT)  # noqa: F401  (ViT adapter baselines)
    adaptformer,
    avalanche_methods,
    clr,
    dora,
    finetune,
    hat,
    inflora,
    linear,
    lora,
    melo,
    piggyback,
    rosa,
)
