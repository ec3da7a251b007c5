"""Config composition (dataclass defaults, SLURM launcher) and W&B offline logging of a real run."""

from __future__ import annotations

import json

import pytest

from recast_bench.cli import main
from recast_bench.config import CONF_DIR, compose_config


def test_dataclass_defaults_fill_groups():
    cfg = compose_config(["trainer=default"])
    assert cfg.trainer.epochs == 100 and cfg.trainer.lr_step_epochs == 33  # paper section 3
    assert cfg.logger.mode == "offline"
    assert compose_config(["trainer.epochs=7"]).trainer.epochs == 7  # keys that only the dataclass defines


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.timeout_min == 720 and launcher.gpus_per_node == 1


@pytest.mark.slow
def test_wandb_offline_run_logs_tables(run_args, tmp_path):
    out = tmp_path / "wb"
    assert main(run_args("linear", out=out) + ["logger=wandb"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B must run offline by default and write a run to sync later"
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["logger"]["mode"] == "offline"
    # the accuracy matrix after each task and the final summary are W&B tables holding the run's numbers
    tables = sorted((runs[0] / "files" / "media" / "table").glob("acc_matrix_*.table.json"))
    assert len(tables) == 3
    last = json.loads(max(tables, key=lambda p: int(p.name.split("_")[2])).read_text())
    assert last["columns"] == ["after_task", "syn0", "syn1", "syn2"]
    assert [row[1:] for row in last["data"]] == res["acc_matrix"]
    assert list((runs[0] / "files" / "media" / "table").glob("summary_*.table.json"))
