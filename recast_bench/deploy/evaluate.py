"""``recast-bench evaluate RUN``: task-agnostic figures of a finished run, recorded in its ``results.json``.

The run is loaded as ``predict`` loads it (its own model and every task's stored state), its stream is rebuilt and
checked against the split hashes the run recorded (changed data is refused: the figures would describe other
images), and :func:`recast_bench.deploy.agnostic.evaluate_learner` scores every task's test images under every
task's head. ``results.json`` gains ``task_agnostic`` (and ``split_hashes`` when the run predates them); every other
key is left as it was, and the file is replaced atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from recast_bench.errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available")
    return device


def record(run_dir: Path, fingerprint: str, keys: dict[str, Any], if_absent: dict[str, Any]) -> dict:
    """Set ``keys`` (and ``if_absent`` where missing) in ``run_dir/results.json``, atomically; nothing else changes."""
    from recast_bench.engine.checkpoint import read_json, write_json

    path = run_dir / "results.json"
    res = read_json(path)  # re-read: write over the file as it is now, not as it was loaded
    if res.get("fingerprint") != fingerprint:
        raise UserError(f"{path} changed while it was evaluated (another run wrote it); evaluate again")
    res.update(keys)
    for k, v in if_absent.items():
        res.setdefault(k, v)
    write_json(path, res)
    return res


def evaluate_run(run_dir: str | Path, rule: str = "max_softmax", device: str = "auto") -> dict:
    """Compute and record ``task_agnostic`` for a finished run; returns it with ``seconds`` (not recorded)."""
    from recast_bench.data.hashes import check_split_hashes, split_hashes
    from recast_bench.deploy.agnostic import check_rule
    from recast_bench.deploy.run import load_run

    check_rule(rule)
    dev = pick_device(device)
    run = load_run(run_dir)
    hashes = split_hashes(run.tasks_data)
    check_split_hashes(run.results.get("split_hashes"), hashes, run.dir, fix="this run cannot be evaluated on it")
    run.learner.device = dev
    run.model.to(dev)
    if getattr(run.learner, "features", None) is not None:
        run.learner.features.device = dev
    start = time.perf_counter()
    agnostic = run.evaluate_agnostic(rule)
    seconds = time.perf_counter() - start
    res = record(run.dir, str(run.results.get("fingerprint")), {"task_agnostic": agnostic}, {"split_hashes": hashes})
    return {**agnostic, "seconds": seconds, "task_aware": dict(zip(res["tasks"], res["acc_matrix"][-1]))}


def format_agnostic(out: dict) -> str:
    """A Markdown table: per task, task-aware accuracy beside task-id and task-agnostic accuracy."""
    lines = [
        f"task-agnostic evaluation, rule {out['rule']} ({out['seconds']:.1f} s)",
        "| task | test images | task-aware acc | task-id acc | task-agnostic acc |",
        "|---|---|---|---|---|",
    ]
    aware = out["task_aware"]
    for name, r in out["per_task"].items():
        a = aware.get(name)
        lines.append(f"| {name} | {r['n']} | {'-' if a is None else f'{a:.2f}'} | {r['task_id_acc']:.2f} | "
                     f"{r['acc']:.2f} |")  # fmt: skip
    n = sum(r["n"] for r in out["per_task"].values())
    known = [aware[k] for k in out["per_task"] if aware.get(k) is not None]
    mean = f"{sum(known) / len(known):.2f} (mean)" if known else "-"
    lines.append(f"| all (pooled) | {n} | {mean} | {out['task_id_acc']:.2f} | {out['acc']:.2f} |")
    return "\n".join(lines)
