"""recast-bench: RECAST and its parameter-efficient continual-learning baselines on one task-incremental benchmark."""

__version__ = "0.1.0"
