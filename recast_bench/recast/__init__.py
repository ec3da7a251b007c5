"""RECAST core: template banks, generated-weight layers, model surgery, Neural Mimicry, diversity metrics.

Importing the package registers the ``recast`` method. The ``mimic`` subcommand lives in
:mod:`recast_bench.recast.cli` (``add_parser``).
"""

from recast_bench.recast import method as _method  # noqa: F401  (registers "recast")
from recast_bench.recast.layers import ReparamConv2d, ReparamLinear, TemplateBank
from recast_bench.recast.mimicry import MimicConfig, neural_mimicry
from recast_bench.recast.pipeline import load_recast_model, recast_backbone
from recast_bench.recast.surgery import RecastPlan, RecastSpec, apply_plan, make_plan

__all__ = [
    "MimicConfig",
    "RecastPlan",
    "RecastSpec",
    "ReparamConv2d",
    "ReparamLinear",
    "TemplateBank",
    "apply_plan",
    "load_recast_model",
    "make_plan",
    "neural_mimicry",
    "recast_backbone",
]
