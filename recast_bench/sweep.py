"""Hydra entry point for multirun sweeps (paper Figures 5 and 6): ``python -m recast_bench.sweep -m ...``.

It composes ``conf/`` exactly like ``recast-bench run`` (same groups, same validation) and calls
:func:`recast_bench.engine.loop.run` once per job, e.g.::

    python -m recast_bench.sweep -m experiment=recast_gnk backbone=vit_small stream=six
    python -m recast_bench.sweep -m experiment=recast_targets backbone=vit_tiny trainer=tiny

Each ``conf/experiment/recast_*.yaml`` names its sweep in ``hydra.sweeper.params`` and gives every job its own
``out`` (a resumable run directory), so re-launching a sweep only runs the jobs that did not finish. A job that
fails with a user error prints one line and the sweep goes on with the next job.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from recast_bench.config import CONF_DIR, finish_config
from recast_bench.errors import UserError


def _validated(cfg: DictConfig) -> DictConfig:
    """The card and per-group validation of :func:`recast_bench.config.compose_config`, on Hydra's composed config."""
    # Detached from Hydra's flags, interpolations kept: finish_config fills each method part's defaults first (an
    # experiment's ``out`` may name ``${method.recast.templates}``, which only the dataclass holds), then resolves.
    return finish_config(OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """One sweep job: run (or resume) it; returns the average accuracy (Hydra's optimising sweepers use it)."""
    from recast_bench.cli import print_summary, quiet_libraries
    from recast_bench.engine.loop import run

    os.environ.setdefault("WANDB_MODE", "offline")
    quiet_libraries()
    try:
        res = run(_validated(cfg))
    except UserError as e:
        print(f"recast-bench sweep: error: {e}", file=sys.stderr)
        return None
    print_summary([res])
    return res["avg_acc"]


if __name__ == "__main__":
    main()
