"""Task packs: every task's own state and head of a run in one safetensors file, beside one shared backbone.

Keys are ``<task name>/<state key>``, exactly the per-task state the run saved (for RECAST: one packed coefficient
tensor plus the head). The metadata holds the task names in order, their class names and the run's fingerprint, so
a pack is refused by a run it was not made from. ``load_run(run_dir, pack=FILE)`` rebuilds the shared backbone from
the run and takes every task from the pack; ``LoadedRun.activate(name)`` then switches task by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.deploy.run import LoadedRun

FORMAT = "recast-bench-task-pack/1"


def pack_tensors(states: dict[int, dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    return {f"{names[t]}/{k}": v.detach().cpu().contiguous() for t, state in states.items() for k, v in state.items()}


def check_out_file(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it")


def write_pack(run: LoadedRun, path: str | Path, force: bool = False) -> dict[str, Any]:
    """Write ``run``'s task pack to ``path``; returns its summary (total and per-task bytes)."""
    from recast_bench.engine.checkpoint import save_tensors

    path = Path(path)
    check_out_file(path, force)
    names = [t.name for t in run.tasks]
    meta = {
        "format": FORMAT,
        "fingerprint": str(run.results.get("fingerprint")),
        "method": run.method_name,
        "backbone": run.backbone_name,
        "tasks": json.dumps(names),
        "classes": json.dumps({t.name: t.class_names for t in run.tasks}),
    }
    total = save_tensors(path, pack_tensors(run.states, names), meta)
    return summary(run.states, names, total)


def summary(states: dict[int, dict[str, torch.Tensor]], names: list[str], total: int) -> dict[str, Any]:
    """Bytes per task: the task's own state (e.g. RECAST coefficients) and its head, tensor data only."""
    from recast_bench.engine.model import split_head

    def nbytes(tensors: dict[str, torch.Tensor]) -> int:
        return sum(v.numel() * v.element_size() for v in tensors.values())

    per_task = {}
    for t, state in states.items():
        own, head = split_head(state, t)
        per_task[names[t]] = {"state_bytes": nbytes(own), "head_bytes": nbytes(head)}
    return {"file_bytes": total, "tasks": len(names), "file_bytes_per_task": total / max(1, len(names)),
            "per_task": per_task}  # fmt: skip


def read_pack(path: str | Path, run: LoadedRun) -> dict[int, dict[str, torch.Tensor]]:
    """Per-task states from a pack written for ``run`` (same fingerprint and tasks)."""
    from recast_bench.engine.checkpoint import load_tensors, tensor_metadata

    path = Path(path)
    meta = tensor_metadata(path) if path.is_file() else None
    if meta is None:
        raise UserError(f"task pack {path} not found")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a recast-bench task pack")
    if meta.get("fingerprint") != str(run.results.get("fingerprint")):
        raise UserError(f"task pack {path} was made from another run (fingerprint differs from {run.dir})")
    names = json.loads(meta["tasks"])
    if names != [t.name for t in run.tasks]:
        raise UserError(f"task pack {path} holds tasks {names}, the run has {[t.name for t in run.tasks]}")
    flat = load_tensors(path)
    states: dict[int, dict[str, torch.Tensor]] = {t: {} for t in range(len(names))}
    index = {n: t for t, n in enumerate(names)}
    for key, value in flat.items():
        name, _, k = key.partition("/")
        states[index[name]][k] = value
    return states
