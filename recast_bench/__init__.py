"""recast-bench: RECAST and its parameter-efficient continual-learning baselines on one task-incremental benchmark."""

__version__ = "0.1.0"


def load_run(run_dir, pack=None):  # noqa: ANN001, ANN201 (lazy: importing recast_bench must stay cheap)
    """Load a finished run for prediction and export: ``recast_bench.load_run(dir).predict(images, task=...)``."""
    from recast_bench.deploy import load_run as _load_run

    return _load_run(run_dir, pack)
