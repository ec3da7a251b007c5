"""Continual-learning metrics from one run's accuracy matrix (percentages), plus the two that need a second run.

``R[i][j]`` is the test accuracy on task j after training task i (``results.json``'s ``acc_matrix``), T tasks:

* average accuracy ``A = (1/T) sum_j R[T][j]`` (the tables' accuracy);
* average incremental accuracy ``AIA = (1/T) sum_i (1/i) sum_{j<=i} R[i][j]`` (Rebuffi et al., iCaRL, 2017);
* backward transfer ``BWT = (1/(T-1)) sum_{j<T} (R[T][j] - R[j][j])`` (Lopez-Paz & Ranzato, GEM, 2017);
* forgetting ``F = (1/(T-1)) sum_{j<T} max_{j<=l<T} (R[l][j] - R[T][j])`` (Chaudhry et al., RWalk, 2018: the drop
  from the best accuracy a task ever had to its final one);
* forward transfer against a reference run ``FWT = (1/(T-1)) sum_{j>1} (R[j][j] - Rref[j][j])``: how much better a
  task is learnt after its predecessors than by the reference (by default the ``linear`` run of the same backbone
  and stream: frozen backbone, its own head, so nothing flows between its tasks);
* plasticity gap to ``finetune`` per task ``G_j = Rft[j][j] - R[j][j]``: how much less the method learns task j than
  fine-tuning the whole network does, right after learning it (positive: less plastic than fine-tuning).

Indices above are 1-based as in the papers; the code is 0-based. Every function returns ``None`` when the matrix
lacks what it needs (an incomplete run, a missing entry), never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _rows(m: Matrix, k: int | None = None) -> int | None:
    """Number of completed rows (all entries j <= i present); ``None`` when there are none."""
    k = len(m) if k is None else k
    done = 0
    for i in range(k):
        if any(m[i][j] is None for j in range(i + 1)):
            break
        done = i + 1
    return done or None


def average_accuracy(m: Matrix, k: int | None = None) -> float | None:
    t = _rows(m, k)
    return None if t is None else sum(m[t - 1][:t]) / t  # type: ignore[arg-type]


def average_incremental_accuracy(m: Matrix, k: int | None = None) -> float | None:
    t = _rows(m, k)
    if t is None:
        return None
    return sum(sum(m[i][: i + 1]) / (i + 1) for i in range(t)) / t  # type: ignore[arg-type]


def backward_transfer(m: Matrix, k: int | None = None) -> float | None:
    t = _rows(m, k)
    if t is None or t < 2:
        return None
    return sum(m[t - 1][j] - m[j][j] for j in range(t - 1)) / (t - 1)  # type: ignore[operator]


def forgetting_per_task(m: Matrix, k: int | None = None) -> list[float] | None:
    """Chaudhry's forgetting of each earlier task (the last task has none)."""
    t = _rows(m, k)
    if t is None or t < 2:
        return None
    return [max(m[ell][j] for ell in range(j, t - 1)) - m[t - 1][j] for j in range(t - 1)]  # type: ignore[operator]


def forgetting(m: Matrix, k: int | None = None) -> float | None:
    per = forgetting_per_task(m, k)
    return None if per is None else sum(per) / len(per)


def diagonal(m: Matrix, k: int | None = None) -> list[float] | None:
    """``R[j][j]``: each task's accuracy just after it was learnt."""
    t = _rows(m, k)
    return None if t is None else [float(m[j][j]) for j in range(t)]  # type: ignore[arg-type]


def forward_transfer(m: Matrix, reference_diag: Sequence[float | None], k: int | None = None) -> float | None:
    """Mean over tasks 2..T of ``R[j][j] - Rref[j][j]``; ``None`` without two tasks or the reference's entries."""
    d = diagonal(m, k)
    if d is None or len(d) < 2 or len(reference_diag) < len(d) or any(r is None for r in reference_diag[1 : len(d)]):
        return None
    return sum(d[j] - float(reference_diag[j]) for j in range(1, len(d))) / (len(d) - 1)  # type: ignore[arg-type]


def plasticity_gap(m: Matrix, finetune_diag: Sequence[float | None], k: int | None = None) -> list[float | None]:
    """Per task ``Rft[j][j] - R[j][j]`` (``None`` where either is missing)."""
    d = diagonal(m, k) or []
    return [
        None if j >= len(d) or j >= len(finetune_diag) or finetune_diag[j] is None else float(finetune_diag[j]) - d[j]
        for j in range(len(m))
    ]


def run_metrics(res: dict) -> dict[str, float | None]:
    """The single-run metrics of a ``results.json`` dict (its completed rows only)."""
    m, k = res["acc_matrix"], res.get("completed_tasks", len(res["tasks"]))
    return {
        "avg_acc": average_accuracy(m, k),
        "avg_inc_acc": average_incremental_accuracy(m, k),
        "bwt": backward_transfer(m, k),
        "forgetting": forgetting(m, k),
    }
