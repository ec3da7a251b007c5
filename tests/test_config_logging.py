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


def test_metrics_csv_one_row_per_epoch_per_task_with_train_and_val(run_args, tmp_path):
    import csv

    out = tmp_path / "csvrun"
    assert main(run_args("linear", out=out) + ["logger=csv", "trainer.epochs=3"]) == 0
    with open(out / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    res = json.loads((out / "results.json").read_text())
    assert [(int(r["task_index"]), r["task"], int(r["epoch"])) for r in rows] == [
        (t, name, e) for t, name in enumerate(res["tasks"]) for e in range(3)
    ], "one row per epoch per task, epochs numbered as training numbered them (0-based)"
    for r in rows:  # no empty row, and every row holds that epoch's train and val metrics together
        assert r["train/loss"] and r["train/acc"] and r["val/acc"], r
    # the row of the selected epoch holds the val accuracy results.json reports for it
    for t, name in enumerate(res["tasks"]):
        best = [r for r in rows if r["task"] == name and int(r["epoch"]) == res["best_epoch"][t]]
        assert float(best[0]["val/acc"]) == pytest.approx(res["val_acc"][t], abs=1e-4)
    assert res["selection"]["ties"] == "latest" and res["selection"]["metric"] == "val/acc"


def test_epoch_rows_pair_train_and_val_of_the_same_epoch():
    """The callback writes epoch e's row only once its train metrics are published (next epoch start / train end)."""
    from types import SimpleNamespace

    import torch

    from recast_bench.engine.logging import EpochMetrics

    class Capture:
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, dict(metrics)))

    log = Capture()
    cb = EpochMetrics(log, 1, "b", step0=10)  # type: ignore[arg-type]
    tr = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, callback_metrics={})
    for epoch in range(2):
        tr.current_epoch = epoch
        cb.on_train_epoch_start(tr, None)
        tr.callback_metrics["val/acc"] = torch.tensor(10.0 + epoch)  # validation runs inside the epoch
        cb.on_validation_end(tr, None)
        cb.on_train_epoch_end(tr, None)
        tr.callback_metrics["train/acc"] = torch.tensor(50.0 + epoch)  # Lightning publishes train after the hooks
    cb.on_train_end(tr, None)
    assert [(s, m["epoch"], m["train/acc"], m["val/acc"]) for s, m in log.rows] == [(10, 0, 50.0, 10.0),
                                                                                   (11, 1, 51.0, 11.0)]  # fmt: skip
    assert cb.step == 12


def test_validation_ties_keep_the_latest_epoch(monkeypatch):
    """A val accuracy equal to the best so far moves the selection to the later epoch (README: model selection)."""
    from recast_bench.engine.learner import selects

    assert selects(80.0, 80.0, "max") and not selects(79.0, 80.0, "max") and selects(81.0, 80.0, "max")
    assert selects(0.5, 0.5, "min") and not selects(0.6, 0.5, "min") and selects(0.4, 0.5, "min")  # HAT: val/loss
    assert selects(0.0, None, "max") and not selects(float("nan"), None, "min")
    from recast_bench.engine.results import SELECTION, new_results

    assert new_results("m", "b", "s", 0, ["a"], {})["selection"] == SELECTION == {**SELECTION, "ties": "latest"}


def test_wandb_grouping_by_backbone_stream_protocol():
    from recast_bench.config import LoggerConfig
    from recast_bench.engine.logging import summary_fields, wandb_grouping
    from recast_bench.report.wandb_push import report_group

    cfg = {"backbone": {"name": "vit_small"}, "stream": {"name": "six"}, "method_name": "recast+melo", "seed": 1998}
    g = wandb_grouping(cfg)
    assert g == {"group": "vit_small-six-default", "job_type": "recast+melo",
                 "tags": ["seed-1998", "method-recast+melo"]}  # fmt: skip
    assert wandb_grouping({**cfg, "protocol": "table2-recast"})["group"] == "vit_small-six-table2-recast"
    assert wandb_grouping(cfg, LoggerConfig(group="mine", tags=["x"]))["group"] == "mine"
    # the protocol block a run records: methods of one paper table share a group; card-less runs are "default"
    card = {"card": "melo", "table": "table2", "overridden": [], "unapplied": []}
    assert wandb_grouping({**cfg, "protocol": card})["group"] == "vit_small-six-table2"
    assert wandb_grouping({**cfg, "protocol": {**card, "card": None}})["group"] == "vit_small-six-default"
    # the report run joins the runs' group when they share one
    runs = [{"config": cfg}, {"config": {**cfg, "method_name": "melo", "seed": 42}}]
    assert report_group(runs) == ("vit_small-six-default", [])
    assert report_group([*runs, {"config": {**cfg, "stream": {"name": "six_quick"}}}])[0] is None
    res = {
        "avg_acc": 80.0,
        "bwt": -1.0,
        "trainable_params_per_task": [96, 96],
        "bytes_per_task": [472, 480],
        "head_params_per_task": [10, 20],
        "head_bytes_per_task": [100, 200],
        "wall_s": 1.0,
        "peak_mem_mb": 2.0,
    }
    s = summary_fields(res)
    assert (s["avg_acc"], s["bwt"], s["params_per_task"], s["bytes_per_task"]) == (80.0, -1.0, 96, 480)
