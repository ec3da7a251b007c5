"""The ``results.json`` schema: accuracy matrix, per-task sizes and costs, and the resolved config.

Accuracies are percentages. Per-task lists are aligned with ``tasks``. ``acc_matrix[i][j]`` is the test accuracy
on task j after training task i (``None`` where j > i).

Schema 2 adds (a schema-1 file simply lacks them; a resumed schema-1 run gains them, null for its earlier tasks):
``compile`` / ``compile_backend`` (the torch.compile setting actually used), ``timing`` (per task: measured
steady-state images/s and fixed costs, engine/timing.py), ``task_switch_ms``, ``git_commit`` and
``versions.avalanche``. Beside it, ``predictions.safetensors`` holds every seen task's latest per-image test
predictions (:func:`write_predictions`).
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from recast_bench.report.predictions import FILE, save_predictions

SCHEMA_VERSION = 2
PREDICTIONS = FILE
"""The per-image predictions file (report/predictions.py owns its format)."""

SELECTION = {
    "metric": "val/acc", "mode": "max", "ties": "latest", "epoch_index": "0-based, as logged in logs/metrics.csv",
}  # fmt: skip
"""How ``best_epoch`` is chosen by default: the highest validation accuracy; among equal ones the latest epoch, which
has trained longest at the lowest learning rate (the earliest would keep, e.g., epoch 0 whenever a small val set
saturates). A method may select on another metric (:meth:`Method.selection`, HAT: the lowest ``val/loss``):
:func:`selection_record` writes the one a run used."""


def selection_record(metric: str, mode: str) -> dict:
    """``results.json``'s ``selection``: :data:`SELECTION` with the metric and direction this run selected by."""
    if mode == "last":  # no selection at all (Avalanche): the last epoch is kept, there are no ties to break
        return {"metric": metric, "mode": mode, "ties": None, "epoch_index": SELECTION["epoch_index"]}
    return {**SELECTION, "metric": metric, "mode": mode}


REQUIRED_KEYS = (
    "method", "backbone", "stream", "seed", "tasks", "acc_matrix", "final_acc", "avg_acc", "bwt",
    "trainable_params_per_task", "head_params_per_task", "bytes_per_task", "wall_s", "peak_mem_mb", "config",
)  # fmt: skip


def new_results(
    method: str, backbone: str, stream: str, seed: int, tasks: list[str], config: dict, **extra: Any
) -> dict:
    n = len(tasks)
    return {
        "schema_version": SCHEMA_VERSION,
        "method": method,
        "backbone": backbone,
        "stream": stream,
        "seed": seed,
        "tasks": tasks,
        "status": "running",
        "completed_tasks": 0,
        "acc_matrix": [[None] * n for _ in range(n)],
        "val_acc": [None] * n,
        "best_epoch": [None] * n,
        "selection": dict(SELECTION),
        "final_acc": [None] * n,
        "avg_acc": None,
        "bwt": None,
        "trainable_params_per_task": [None] * n,
        "head_params_per_task": [None] * n,
        "bytes_per_task": [None] * n,
        "head_bytes_per_task": [None] * n,
        "train_s_per_task": [None] * n,
        "wall_s": 0.0,
        "peak_mem_mb": 0.0,
        "peak_rss_mb": 0.0,
        "peak_gpu_mem_mb": None,
        # Filled by the loop (engine/device.py device_record): device ("cuda:0"/"cpu"), gpu_name, precision, profile.
        "device": None,
        "gpu_name": None,
        "precision": None,
        "profile": None,
        "compile": None,
        "compile_backend": None,
        "timing": [None] * n,
        "task_switch_ms": None,
        "config": config,
        **extra,
    }


SCHEMA_2_DEFAULTS = {"compile": None, "compile_backend": None, "task_switch_ms": None, "git_commit": None}


def upgrade_results(res: dict) -> dict:
    """Give a schema-1 results dict (a run resumed across the upgrade) schema 2's keys, null where unknown."""
    for key, value in SCHEMA_2_DEFAULTS.items():
        res.setdefault(key, value)
    res.setdefault("timing", [None] * len(res["tasks"]))
    versions = res.setdefault("versions", {})
    if isinstance(versions, dict):
        versions.setdefault("avalanche", package_version("avalanche-lib"))
    res["schema_version"] = SCHEMA_VERSION
    return res


def package_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (nothing is imported); ``None`` when absent."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the recast-bench checkout when it is a git checkout (a worktree included), else ``None``."""
    root = root or Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def write_predictions(path: Path, preds: dict[str, tuple[torch.Tensor, torch.Tensor] | None], meta: dict) -> None:
    """``predictions.safetensors`` (report/predictions.py writes and reads it: one format, one writer) for every task
    in ``preds`` whose learner gave predictions; nothing is written when none did."""
    given = {name: pl for name, pl in preds.items() if pl is not None}
    if given:
        save_predictions(path, given, meta)


def summarise(res: dict) -> dict:
    """Fill ``final_acc``, ``avg_acc`` and ``bwt`` from the rows of the accuracy matrix completed so far."""
    k = res["completed_tasks"]
    if k == 0:
        return res
    last = res["acc_matrix"][k - 1]
    res["final_acc"] = [last[j] if j < k else None for j in range(len(res["tasks"]))]
    res["avg_acc"] = sum(last[:k]) / k
    # Backward transfer (Lopez-Paz & Ranzato 2017): mean change on earlier tasks since they were learnt.
    res["bwt"] = sum(last[j] - res["acc_matrix"][j][j] for j in range(k - 1)) / (k - 1) if k > 1 else 0.0
    return res


def validate(res: dict) -> None:
    """Raise ``ValueError`` naming the first problem of a results dict (used by tests and ``report``)."""
    for key in REQUIRED_KEYS:
        if key not in res:
            raise ValueError(f"results lack {key!r}")
    n = len(res["tasks"])
    m = res["acc_matrix"]
    if len(m) != n or any(len(r) != n for r in m):
        raise ValueError("acc_matrix is not n x n")
    for i in range(n):
        for j in range(n):
            v = m[i][j]
            if j > i and v is not None:
                raise ValueError(f"acc_matrix[{i}][{j}] should be null")
            if j <= i < res.get("completed_tasks", n) and not (v is not None and 0.0 <= v <= 100.0):
                raise ValueError(f"acc_matrix[{i}][{j}] = {v} is not a percentage")
