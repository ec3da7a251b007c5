"""Intervals and paired tests against values computed by hand (closed forms, not the code under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recast_bench.report import stats


def test_t_interval_three_seeds_and_one_seed():
    iv = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, t(0.975, 2) = 4.302653 (Student-t table): half-width 4.302653 / sqrt(3).
    assert iv.mean == 2.0 and iv.n == 3 and iv.sd == pytest.approx(1.0)
    assert iv.half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert iv.contains(4.4) and not iv.contains(4.5)
    one = stats.t_interval([85.0, None])
    assert one.n == 1 and one.lo is None and one.half is None and one.contains(85.0) is None
    assert "± 0" not in one.text() and "no interval" in one.text()
    assert stats.t_interval([None]) is None


def test_paired_t_matches_the_closed_form_for_two_degrees_of_freedom():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3); for df = 2 the two-sided p is 1 - t / sqrt(2 + t^2).
    res = stats.paired_t([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])
    t = 2 * math.sqrt(3)
    assert res.diff == pytest.approx(2.0) and res.n == 3
    assert res.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert res.hi - res.diff == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert stats.paired_t([1.0], [0.0]) is None  # one pair: no test
    flat = stats.paired_t([3.0, 4.0], [2.0, 3.0])  # the same difference on every seed: no spread
    assert flat.p == 0.0 and flat.lo == flat.hi == 1.0


def test_mcnemar_exact_and_mid_p_by_hand():
    # b=1, c=9: P(X <= 1) for X ~ Bin(10, 1/2) = 11/1024; exact = 22/1024, mid-p = 22/1024 - 10/1024.
    m = stats.mcnemar_counts(1, 9, 50)
    assert m.p_exact == pytest.approx(22 / 1024) and m.p_mid == pytest.approx(12 / 1024)
    assert stats.mcnemar_counts(0, 0, 10).p_exact == 1.0
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([0, 1, 1, 0, 0], bool)
    m = stats.mcnemar(a, b)
    assert (m.b, m.c, m.n) == (2, 1, 5)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04); None stays out of the family.
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])


def test_bootstrap_matches_the_binomial_spread():
    # 100 images, 30 with the method right and the reference wrong, the rest tied: the difference is 30 points and
    # its bootstrap sd is 100 sqrt(0.3 x 0.7 / 100) = 4.58, so the 95 % interval is about 30 +- 1.96 x 4.58.
    d = np.zeros(100)
    d[:30] = 1.0
    res = stats.paired_bootstrap([(1.0, d)], samples=4000)
    assert res.diff == pytest.approx(30.0)
    assert 30 - 1.96 * 4.58 - 1.5 < res.lo < 30 - 1.96 * 4.58 + 1.5
    assert 30 + 1.96 * 4.58 - 1.5 < res.hi < 30 + 1.96 * 4.58 + 1.5
    assert res.p == pytest.approx(1 / 4000)  # never reached 0 in 4000 centred resamples: the floor
    tied = stats.paired_bootstrap([(0.5, np.array([1.0, -1.0] * 5)), (0.5, np.zeros(7))])
    assert tied.diff == 0.0 and tied.p == 1.0
    # The same seed gives the same report.
    assert stats.paired_bootstrap([(1.0, d)]).lo == stats.paired_bootstrap([(1.0, d)]).lo


def test_bootstrap_weights_tasks_equally():
    # Task A: 10 images, all +1 (100 points); task B: 1000 images, all 0: average-accuracy difference is 50.
    res = stats.paired_bootstrap([(0.5, np.ones(10)), (0.5, np.zeros(1000))])
    assert res.diff == pytest.approx(50.0) and res.n == 1010


def test_verdict_and_paper_marks():
    better = stats.PairedResult("t", 2.0, 3, 0.01, p_adj=0.03)
    assert stats.verdict(better) == "better"
    assert stats.verdict(stats.PairedResult("t", -2.0, 3, 0.01, p_adj=0.2)) == "within noise"
    assert stats.verdict(stats.PairedResult("t", -2.0, 3, 0.01)) == "worse"
    assert stats.verdict(None) == "n/a"
    iv = stats.t_interval([84.0, 85.0, 86.0])
    assert stats.vs_paper(iv, 85.0) == "inside"
    assert stats.vs_paper(iv, 90.1) == "outside (paper above)"
    assert stats.vs_paper(iv, 80.0) == "outside (paper below)"
    assert stats.vs_paper(stats.t_interval([85.0]), 85.0) == "one seed: no interval"
    assert stats.vs_paper(iv, None) is None
