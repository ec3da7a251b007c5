"""Datasets and the task stream. Importing registers every stream."""

from recast_bench.data import six as _six  # noqa: F401  (registers "six", "six_reversed", "six_permuted")
from recast_bench.data import synthetic as _synthetic  # noqa: F401  (registers "synthetic")
from recast_bench.data.stream import Task, build_stream

__all__ = ["Task", "build_stream"]
