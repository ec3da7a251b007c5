"""``OUT/predictions.safetensors``: per-image test predictions of the latest evaluation of every task seen so far.

The file contract (CONTRACTS.md): tensors ``pred/<task>`` and ``label/<task>``, int16 of shape [N_test] in test-set
order (``pred`` is the arg-max class under the task's own head); metadata ``{"after_task": "<t>",
"fingerprint": "<fp>"}``. The engine writes it after every task with :func:`save_predictions`; ``report`` reads it
with :func:`load_predictions` for the paired tests over test images. numpy only: reading needs no torch import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recast_bench.errors import UserError

FILE = "predictions.safetensors"
_INT16 = np.iinfo(np.int16)


def _as_int16(x: Any, what: str) -> np.ndarray:  # noqa: ANN401 (a torch tensor or anything numpy takes)
    if hasattr(x, "detach"):  # a torch tensor, possibly on a device: one copy to the host here, at the end of a task
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < _INT16.min or a.max() > _INT16.max):
        raise ValueError(f"{what} must hold integer class ids that fit int16")
    return a.astype(np.int16)


def save_predictions(path: str | Path, per_task: dict[str, tuple[Any, Any]], meta: dict[str, Any]) -> Path:
    """Write ``{task: (pred, label)}`` atomically (temporary name, then rename) with string ``meta``.

    ``pred`` / ``label`` may be torch tensors or numpy arrays of one task's test images in test-set order; ``meta``
    should hold ``after_task`` (the index or name of the task just trained) and ``fingerprint``.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    for task, (pred, label) in per_task.items():
        p, lab = _as_int16(pred, f"pred/{task}"), _as_int16(label, f"label/{task}")
        if p.shape != lab.shape:
            raise ValueError(f"task {task}: {p.size} predictions for {lab.size} labels")
        tensors[f"pred/{task}"], tensors[f"label/{task}"] = p, lab
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return path


@dataclass
class Predictions:
    """One run's final predictions: ``pred[task]`` and ``label[task]`` (int16), and the file's metadata."""

    pred: dict[str, np.ndarray]
    label: dict[str, np.ndarray]
    meta: dict[str, str]

    def right(self, task: str) -> np.ndarray:
        return self.pred[task] == self.label[task]


def load_predictions(run_dir: str | Path) -> Predictions | None:
    """The run's predictions, or ``None`` when it has no such file (a run from before the contract).

    A file that is there but unreadable or inconsistent is a :class:`UserError` naming it.
    """
    f = Path(run_dir) / FILE
    if not f.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="numpy") as h:
            meta = dict(h.metadata() or {})
            arrays = {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for a torn or foreign file
        raise UserError(f"cannot read {f}: {e}") from None
    pred = {k.partition("/")[2]: v for k, v in arrays.items() if k.startswith("pred/")}
    label = {k.partition("/")[2]: v for k, v in arrays.items() if k.startswith("label/")}
    if set(pred) != set(label) or any(pred[t].shape != label[t].shape or pred[t].ndim != 1 for t in pred):
        raise UserError(f"{f}: every pred/<task> needs a label/<task> of the same length")
    return Predictions(pred, label, meta)


def backfill(run_dir: str | Path, force: bool = False) -> Path:
    """Write the predictions of a finished run that has none, from its stored task states (a run from before the
    engine wrote them): every task is evaluated once on its test set with the run's own evaluation code.

    Needs an engine whose learner records ``last_predictions`` after ``evaluate`` (CONTRACTS.md); avalanche runs,
    which cannot be reloaded, are refused by :func:`recast_bench.deploy.run.load_run` in one line.
    """
    from recast_bench.deploy.run import load_run

    run_dir = Path(run_dir)
    target = run_dir / FILE
    if target.exists() and not force:
        raise UserError(f"{target} exists (use --force to write it again)")
    run = load_run(run_dir)
    per_task = {}
    for info in run.tasks:
        acc = run.evaluate(info.name)
        last = getattr(run.learner, "last_predictions", None)
        if last is None:
            raise UserError(
                "this checkout's engine does not record per-image predictions (learner.last_predictions); "
                "update recast-bench, then run this again"
            )
        pred, label = last
        got = 100.0 * float((np.asarray(pred) == np.asarray(label)).mean()) if len(label) else 0.0
        if abs(got - acc) > 1e-6:  # the predictions must be the evaluation's own
            raise UserError(f"{run_dir}: predictions of {info.name} give {got:.4f} % but the evaluation {acc:.4f} %")
        per_task[info.name] = (pred, label)
    meta = {"after_task": run.tasks[-1].name, "fingerprint": run.results.get("fingerprint", ""), "backfilled": "true"}
    return save_predictions(target, per_task, meta)


def main(argv: list[str] | None = None) -> int:
    """``python -m recast_bench.report.predictions RUN... [--force]``: backfill predictions of finished runs."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        description="Write predictions.safetensors for finished runs that have none, from their stored task states."
    )
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--force", action="store_true", help="write again where the file exists")
    args = p.parse_args(argv)
    try:
        for r in args.runs:
            print(f"wrote {backfill(r, args.force)}", file=sys.stderr)
    except UserError as e:
        print(f"recast-bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
