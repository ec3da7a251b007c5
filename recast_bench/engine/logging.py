"""Run loggers: W&B (offline by default) or CSV, fed with a monotonic step across tasks.

Lightning restarts ``global_step`` for every task's Trainer, which W&B would reject as non-monotonic, so
per-epoch metrics are forwarded by a callback with our own step counter and namespaced per task.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from recast_bench.config import LoggerConfig


def make_logger(lcfg: LoggerConfig, out_dir: Path, name: str, config: dict) -> Logger | None:
    if lcfg.backend == "none":
        return None
    if lcfg.backend == "csv":
        return CSVLogger(save_dir=str(out_dir), name="logs", version="")
    if lcfg.backend == "wandb":
        os.environ.setdefault("WANDB_MODE", lcfg.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=lcfg.project,
            entity=lcfg.entity,
            name=name,
            group=lcfg.group,
            tags=list(lcfg.tags),
            save_dir=str(out_dir),
            offline=lcfg.mode == "offline",
            mode=lcfg.mode,
            config=config,
        )
        return logger
    from recast_bench.errors import UserError

    raise UserError(f"unknown logger.backend {lcfg.backend!r}; valid: csv, wandb, none")


class EpochMetrics(L.Callback):
    """Forwards each epoch's metrics as ``train/...``, ``val/...`` and ``task/<name>/...`` with a global step."""

    def __init__(self, logger: Logger | None, task_index: int, task_name: str, step0: int) -> None:
        self.logger = logger
        self.task_index = task_index
        self.task_name = task_name
        self.step = step0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        out: dict[str, Any] = dict(metrics)
        out.update({f"task/{self.task_name}/{k}": v for k, v in metrics.items()})
        out["task_index"] = self.task_index
        out["epoch"] = trainer.current_epoch
        if self.logger is not None and trainer.is_global_zero:
            self.logger.log_metrics(out, step=self.step)
        self.step += 1


def log_task_results(logger: Logger | None, results: dict, step: int) -> None:
    """After each task: per-task test accuracy, and the accuracy matrix as a W&B table."""
    if logger is None:
        return
    k = results["completed_tasks"]
    row = results["acc_matrix"][k - 1]
    metrics = {f"task/{results['tasks'][j]}/test/acc": row[j] for j in range(k)}
    metrics["test/avg_acc"] = results["avg_acc"]
    metrics["test/bwt"] = results["bwt"]
    logger.log_metrics(metrics, step=step)
    if isinstance(logger, WandbLogger):
        cols = ["after_task"] + results["tasks"]
        data = [[results["tasks"][i]] + results["acc_matrix"][i] for i in range(k)]
        logger.log_table("acc_matrix", columns=cols, data=data, step=step)
    logger.save()


def finish_logger(logger: Logger | None, results: dict) -> None:
    if logger is None:
        return
    if isinstance(logger, WandbLogger):
        exp = logger.experiment
        for key in ("avg_acc", "bwt", "wall_s", "peak_mem_mb"):
            exp.summary[key] = results[key]
        exp.summary["trainable_params_per_task"] = results["trainable_params_per_task"]
        cols = ["task", "final_acc", "trainable_params", "head_params", "bytes"]
        rows = [
            [t, results["final_acc"][i], results["trainable_params_per_task"][i], results["head_params_per_task"][i],
             results["bytes_per_task"][i]]
            for i, t in enumerate(results["tasks"])
        ]  # fmt: skip
        logger.log_table("summary", columns=cols, data=rows)
    logger.finalize("success")
    if isinstance(logger, WandbLogger):
        import wandb

        wandb.finish()
