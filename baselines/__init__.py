"""Baseline methods, one file each, registered by name on import.

Lightning-engine methods subclass ``recast_bench.engine.method.Method``; Avalanche strategies are wrapped by
``baselines/avalanche_*``. Importing this package registers all of them (no folder scanning).
"""

from baselines import avalanche_methods, finetune, linear  # noqa: F401
from baselines import clr, hat, piggyback  # noqa: F401  (ResNet baselines; piggyback also on ViT)
from baselines import adaptformer, dora, inflora, lora, melo, rosa  # noqa: F401  (ViT adapter baselines)
