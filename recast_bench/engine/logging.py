"""Run loggers: W&B (offline by default) or CSV, fed with a monotonic step across tasks.

Lightning restarts ``global_step`` for every task's Trainer, which W&B would reject as non-monotonic, so
per-epoch metrics are forwarded by a callback with our own step counter and namespaced per task.

One logged row is one training epoch of one task, holding that epoch's train *and* val metrics. Lightning publishes
an epoch's train metrics only after its ``on_train_epoch_end`` hooks have run (and after validation), so the row of
epoch ``e`` is written when epoch ``e + 1`` starts, or when training ends for the last epoch.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from recast_bench.config import LoggerConfig

METRICS_CSV = "metrics.csv"
TEST_CSV = "test.csv"
_FIRST_COLUMNS = ["task_index", "task", "epoch", "step"]


def wandb_grouping(config: dict, lcfg: LoggerConfig | None = None) -> dict[str, Any]:
    """W&B ``group``, ``job_type`` and ``tags`` of a run, so a synced project already compares methods.

    Runs are grouped by backbone, stream and protocol (the paper table whose cards the run followed, e.g. ``table2``;
    ``default`` when it used no card), so every method of one table lands in one group; the method is the job type
    and the seed a tag. ``logger.group`` / ``logger.tags`` set by the user win / add.
    """
    backbone = str((config.get("backbone") or {}).get("name", "unknown"))
    stream = str((config.get("stream") or {}).get("name", "unknown"))
    protocol = config.get("protocol") or config.get("card") or "default"
    if isinstance(protocol, dict):  # the recorded card (protocol/apply.py): its table, not the per-method card id
        protocol = (protocol.get("table") if protocol.get("card") else None) or "default"
    group = f"{backbone}-{stream}-{protocol}"
    tags = [f"seed-{config.get('seed')}", f"method-{config.get('method_name', 'unknown')}"]
    if lcfg is not None:
        group = lcfg.group or group
        tags += [str(t) for t in lcfg.tags]
    return {"group": group, "job_type": str(config.get("method_name", "run")), "tags": tags}


class EpochCSVLogger(Logger):
    """``<out>/logs/metrics.csv``: one row per epoch per task (train and val together); test rows in ``test.csv``.

    The whole file is rewritten on each row (a few hundred rows at most), atomically, so a killed run never leaves a
    torn file; rows of a task that is trained again after a resume replace the interrupted attempt's rows.
    """

    def __init__(self, log_dir: str | Path) -> None:
        super().__init__()
        self._dir = Path(log_dir)
        self.epoch_rows = self._read(self._dir / METRICS_CSV)
        self.test_rows = self._read(self._dir / TEST_CSV)

    @property
    def log_dir(self) -> str:
        return str(self._dir)

    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _write(path: Path, rows: list[dict[str, Any]]) -> None:
        from recast_bench.engine.checkpoint import _atomic_replace

        cols = [c for c in _FIRST_COLUMNS if any(c in r for r in rows)]
        cols += sorted({k for r in rows for k in r} - set(cols))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        _atomic_replace(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))

    def start_task(self, task_index: int) -> None:
        """Forget rows of this task and later ones (an interrupted attempt before a resume)."""
        keep = [r for r in self.epoch_rows if int(r["task_index"]) < task_index]
        if len(keep) != len(self.epoch_rows):
            self.epoch_rows = keep
            self._write(self._dir / METRICS_CSV, self.epoch_rows)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        # task/<name>/... keys repeat train/ and val/ per task for W&B charts; the CSV has a task column instead.
        row = {"step": step, **{k: v for k, v in metrics.items() if not k.startswith("task/") or "/test/" in k}}
        if "epoch" in metrics:
            self.epoch_rows.append(row)
            self._write(self._dir / METRICS_CSV, self.epoch_rows)
        else:
            self.test_rows.append(row)
            self._write(self._dir / TEST_CSV, self.test_rows)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        """The resolved config is in ``results.json``; nothing to add here."""

    def save(self) -> None:
        """Every row is written when logged."""

    def finalize(self, status: str) -> None:
        """Every row is written when logged."""


def require_logger_package(lcfg: LoggerConfig) -> None:
    """``logger=wandb`` needs the wandb package; without it the run stops here with one line, before anything is
    written. wandb is imported only here and by the W&B logger (and ``report --wandb``), never for other loggers."""
    if lcfg.backend != "wandb":
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        from recast_bench.errors import UserError

        raise UserError(
            "logger=wandb needs the wandb package, which is not installed here (pip install wandb); or use logger=csv"
        ) from None


def make_logger(lcfg: LoggerConfig, out_dir: Path, name: str, config: dict) -> Logger | None:
    if lcfg.backend == "none":
        return None
    if lcfg.backend == "csv":
        return EpochCSVLogger(Path(out_dir) / "logs")
    if lcfg.backend == "wandb":
        os.environ.setdefault("WANDB_MODE", lcfg.mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=lcfg.project,
            entity=lcfg.entity,
            name=name,
            save_dir=str(out_dir),
            offline=lcfg.mode == "offline",
            mode=lcfg.mode,
            config=config,
            **wandb_grouping(config, lcfg),
        )
        return logger
    from recast_bench.errors import UserError

    raise UserError(f"unknown logger.backend {lcfg.backend!r}; valid: csv, wandb, none")


class EpochMetrics(L.Callback):
    """Logs one row per training epoch: ``train/...``, ``val/...``, ``task/<name>/...``, with a global step.

    ``epoch`` is the 0-based epoch index the Trainer used (the one ``results.json``'s ``best_epoch`` refers to).
    """

    def __init__(self, logger: Logger | None, task_index: int, task_name: str, step0: int) -> None:
        self.logger = logger
        self.task_index = task_index
        self.task_name = task_name
        self.step = step0
        self._pending: int | None = None  # epoch whose train metrics are not published yet
        self._val_epoch: int | None = None  # last epoch that ran validation

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = getattr(self.logger, "start_task", None)
        if start is not None and trainer.is_global_zero:
            start(self.task_index)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending is None:
            return
        epoch, self._pending = self._pending, None
        prefixes = ("train/", "val/") if self._val_epoch == epoch else ("train/",)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefixes)}
        out: dict[str, Any] = {"task_index": self.task_index, "task": self.task_name, "epoch": epoch}
        out.update(metrics)
        out.update({f"task/{self.task_name}/{k}": v for k, v in metrics.items()})
        if self.logger is not None and trainer.is_global_zero:
            if isinstance(self.logger, WandbLogger):
                out.pop("task")  # W&B charts want numbers; the task is in the metric names
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


def summary_fields(results: dict) -> dict[str, Any]:
    """The W&B summary of a run: what a project table compares across methods (one number per column)."""

    def largest(values: list) -> int | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return {
        "avg_acc": results["avg_acc"],
        "bwt": results["bwt"],
        "params_per_task": largest(results["trainable_params_per_task"]),
        "bytes_per_task": largest(results["bytes_per_task"]),
        "head_params_per_task": largest(results["head_params_per_task"]),
        "head_bytes_per_task": largest(results.get("head_bytes_per_task", [])),
        "trainable_params_per_task": results["trainable_params_per_task"],
        "bytes_per_task_list": results["bytes_per_task"],
        "wall_s": results["wall_s"],
        "peak_mem_mb": results["peak_mem_mb"],
    }


def finish_logger(logger: Logger | None, results: dict) -> None:
    if logger is None:
        return
    if isinstance(logger, WandbLogger):
        exp = logger.experiment
        for key, value in summary_fields(results).items():
            exp.summary[key] = value
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
