"""Fault tolerance and scale: SIGKILL at several points then resume, and 2-process DDP on CPU (gloo).

These run the real console script in subprocesses, so they are marked slow (CI still runs them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_STREAM, TINY_TRAINER

BIN = Path(sys.executable).parent / "recast-bench"


def _cmd(out: Path, data: Path, method: str = "finetune", extra: tuple = ()) -> list[str]:
    return [str(BIN), "run", "--method", method, "--backbone", "vit_tiny", "--stream", "synthetic", "--out", str(out),
            f"paths.data_dir={data}", "logger=none", *TINY_STREAM, *TINY_TRAINER, *extra]  # fmt: skip


def _run(cmd: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("RECAST_BENCH_KILL_AT", None)
    if kill_at:
        env["RECAST_BENCH_KILL_AT"] = kill_at
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _metrics(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    return {k: r[k] for k in ("acc_matrix", "val_acc", "best_epoch", "trainable_params_per_task", "bytes_per_task")}


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    ref = tmp_path / "ref"
    assert _run(_cmd(ref, data)).returncode == 0
    expected = _metrics(ref)
    # after task 1's results are written; mid-task 2 (8th training step); during the 2nd checkpoint write
    for point in ("task_done:1", "mid_task:8", "checkpoint_write:2"):
        out = tmp_path / point.replace(":", "_")
        killed = _run(_cmd(out, data), kill_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-500:])
        assert not list(out.rglob("*.tmp")) or point.startswith("checkpoint"), "only a torn write leaves a tmp"
        resumed = _run(_cmd(out, data))
        assert resumed.returncode == 0, (point, resumed.stderr[-800:])
        assert _metrics(out) == expected, point
        assert json.loads((out / "results.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    res = _run(_cmd(out, tmp_path / "data", method="linear", extra=("trainer=ddp_cpu",)))
    assert res.returncode == 0, res.stderr[-1500:]
    r = json.loads((out / "results.json").read_text())
    n = len(r["tasks"])
    assert len(r["acc_matrix"]) == n and all(len(row) == n for row in r["acc_matrix"])
    assert all(0.0 <= r["acc_matrix"][i][j] <= 100.0 for i in range(n) for j in range(i + 1))
    assert r["config"]["trainer"]["devices"] == 2 and r["config"]["trainer"]["strategy"] == "ddp"
    assert not (out / ".lock").exists()
