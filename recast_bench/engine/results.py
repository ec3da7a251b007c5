"""The ``results.json`` schema: accuracy matrix, per-task sizes and costs, and the resolved config.

Accuracies are percentages. Per-task lists are aligned with ``tasks``. ``acc_matrix[i][j]`` is the test accuracy
on task j after training task i (``None`` where j > i).
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

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
        "config": config,
        **extra,
    }


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
