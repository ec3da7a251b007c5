"""Continual-learning metrics on hand-computed accuracy matrices (expected values worked out in the comments)."""

from __future__ import annotations

import pytest

from recast_bench.report import metrics

# R[i][j]: accuracy on task j after training task i. Task 0 rises after task 1 (70 > 50), so forgetting (max-based)
# and -BWT differ; task 1 improves after task 2 (95 > 90).
R = [
    [50.0, None, None],
    [70.0, 90.0, None],
    [60.0, 95.0, 75.0],
]


def test_average_and_incremental_accuracy():
    assert metrics.average_accuracy(R) == pytest.approx((60 + 95 + 75) / 3)  # 76.667
    # (1/3) [50 + (70 + 90)/2 + (60 + 95 + 75)/3] = (50 + 80 + 76.667) / 3
    assert metrics.average_incremental_accuracy(R) == pytest.approx((50 + 80 + 230 / 3) / 3)


def test_bwt_and_chaudhry_forgetting_differ_when_a_task_improves_first():
    # BWT = [(60 - 50) + (95 - 90)] / 2 = 7.5
    assert metrics.backward_transfer(R) == pytest.approx(7.5)
    # Forgetting: task 0: max(50, 70) - 60 = 10; task 1: max(90) - 95 = -5; mean 2.5 (not -BWT = -7.5).
    assert metrics.forgetting_per_task(R) == pytest.approx([10.0, -5.0])
    assert metrics.forgetting(R) == pytest.approx(2.5)


def test_forward_transfer_and_plasticity_gap_against_references():
    ref_diag = [40.0, 80.0, 70.0]  # the linear run's just-learnt accuracies
    # FWT over tasks 2..T: [(90 - 80) + (75 - 70)] / 2 = 7.5 (task 0 has no predecessor)
    assert metrics.forward_transfer(R, ref_diag) == pytest.approx(7.5)
    assert metrics.diagonal(R) == [50.0, 90.0, 75.0]
    ft_diag = [85.0, 95.0, 70.0]  # finetune's
    assert metrics.plasticity_gap(R, ft_diag) == pytest.approx([35.0, 5.0, -5.0])
    assert metrics.forward_transfer(R, [40.0, None, 70.0]) is None  # a reference entry missing


def test_incomplete_runs_use_completed_rows_only_and_never_invent_numbers():
    partial = [[50.0, None, None], [70.0, 90.0, None], [None, None, None]]
    assert metrics.average_accuracy(partial) == pytest.approx(80.0)
    assert metrics.backward_transfer(partial) == pytest.approx(20.0)  # 70 - 50
    assert metrics.forgetting(partial) == pytest.approx(50.0 - 70.0)  # task 0: max(50) - 70
    assert metrics.average_accuracy(R, k=1) == 50.0
    one = [[88.0]]
    assert metrics.backward_transfer(one) is None and metrics.forgetting(one) is None
    assert metrics.average_accuracy([[None]]) is None
    res = {"acc_matrix": R, "tasks": ["a", "b", "c"], "completed_tasks": 3}
    assert metrics.run_metrics(res) == pytest.approx(
        {"avg_acc": 230 / 3, "avg_inc_acc": (50 + 80 + 230 / 3) / 3, "bwt": 7.5, "forgetting": 2.5}
    )
