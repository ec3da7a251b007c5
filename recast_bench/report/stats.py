"""Intervals and paired tests for report tables (scipy for the distributions).

* :func:`t_interval`: mean over seeds with a two-sided 95 % Student-t interval (n - 1 degrees of freedom); one value
  gives the mean and no interval (never a zero-width one).
* :func:`paired_t`: the paired t-test across seeds (seed s of a method against seed s of a reference).
* :func:`mcnemar`: McNemar's exact conditional test and its mid-p form on one pair of prediction vectors.
* :func:`paired_bootstrap`: the paired bootstrap over test images of the seed-averaged difference in average
  accuracy, resampling images within each task, the same images for every seed.
* :func:`holm`: Holm-Bonferroni adjusted p-values for one family of comparisons.
* :func:`verdict`: better / worse / within noise from a difference and its adjusted p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0
"""Fixed: the same inputs give the same report (the resampling noise of the p-value is about 0.003 at p = 0.05)."""


def _clean(xs: Sequence[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(float(x))]


@dataclass(frozen=True)
class Interval:
    """Mean over ``n`` values with its 95 % t interval (``lo``/``hi`` are ``None`` when n < 2)."""

    mean: float
    n: int
    lo: float | None = None
    hi: float | None = None
    sd: float | None = None

    @property
    def half(self) -> float | None:
        return None if self.hi is None else self.hi - self.mean

    def contains(self, x: float) -> bool | None:
        """Whether ``x`` lies inside the interval; ``None`` without one (one seed)."""
        return None if self.lo is None or self.hi is None else self.lo <= x <= self.hi

    def text(self, digits: int = 2) -> str:
        """``85.00 ± 0.42 (n=3)``; one value: ``85.00 (n=1, no interval)``."""
        if self.half is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no interval)"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n={self.n})"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "n": self.n, "ci95": None if self.lo is None else [self.lo, self.hi], "sd": self.sd}


def t_interval(xs: Sequence[float | None], confidence: float = CONFIDENCE) -> Interval | None:
    """Mean and two-sided t interval of the non-missing values; ``None`` when there are none."""
    from scipy import stats

    vals = _clean(xs)
    if not vals:
        return None
    n = len(vals)
    mean = float(np.mean(vals))
    if n < 2:
        return Interval(mean, 1)
    sd = float(np.std(vals, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, n, mean - half, mean + half, sd)


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison: the difference (method - reference), its interval, the p-value and what was paired."""

    test: str
    diff: float
    n: int
    p: float | None
    lo: float | None = None
    hi: float | None = None
    detail: str = ""
    p_adj: float | None = None

    def with_adjusted(self, p_adj: float | None) -> PairedResult:
        return PairedResult(self.test, self.diff, self.n, self.p, self.lo, self.hi, self.detail, p_adj)


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> PairedResult | None:
    """Paired t-test of ``a - b`` (values aligned by seed); ``None`` with fewer than two pairs.

    Equal differences on every seed have no spread: the p-value is 0 for a non-zero difference (the limit of the
    t statistic) and 1 for none, and the interval is that single value.
    """
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(d.size)
    if n < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return PairedResult("paired t over seeds", mean, n, 0.0 if mean != 0 else 1.0, mean, mean, "no spread")
    t = mean / (sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t), n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedResult("paired t over seeds", mean, n, p, mean - half, mean + half, f"t={t:.2f}, df={n - 1}")


@dataclass(frozen=True)
class McNemar:
    """Discordant counts of one pair of prediction vectors and McNemar's exact and mid-p two-sided p-values."""

    b: int
    """Images the method gets right and the reference wrong."""
    c: int
    """Images the method gets wrong and the reference right."""
    n: int
    p_exact: float
    p_mid: float


def mcnemar_counts(b: int, c: int, n: int) -> McNemar:
    """McNemar's test from the discordant counts: under H0 the ``b + c`` discordant images split Bin(b + c, 1/2).

    Exact: ``min(1, 2 P(X <= min(b, c)))``; mid-p (Fagerland, Lydersen & Laake 2013): the same minus
    ``P(X = min(b, c))``, which keeps the level closer to nominal than the conservative exact test.
    """
    from scipy import stats

    m, k = b + c, min(b, c)
    if m == 0:
        return McNemar(b, c, n, 1.0, 1.0)
    cdf = float(stats.binom.cdf(k, m, 0.5))
    pmf = float(stats.binom.pmf(k, m, 0.5))
    return McNemar(b, c, n, min(1.0, 2 * cdf), min(1.0, 2 * cdf - pmf))


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> McNemar:
    """McNemar on two boolean vectors (image i right under method / reference), same images in the same order."""
    a, b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    return mcnemar_counts(int(np.sum(a & ~b)), int(np.sum(~a & b)), int(a.size))


def paired_bootstrap(
    strata: Sequence[tuple[float, np.ndarray]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> PairedResult:
    """Paired bootstrap over test images of a weighted mean of per-image differences (percentage points).

    Each stratum is ``(weight, d)``: ``d`` holds one value per test image, ``right_method - right_reference``
    (averaged over the paired seeds when they share the test set: values in [-1, 1]); the statistic is
    ``100 * sum_k weight_k * mean(d_k)``. With one stratum per task and weights 1/T it is the difference in average
    accuracy (tasks weighted equally, as in the tables), averaged over seeds. Images are resampled with replacement
    within each stratum, so a shared test set is resampled once for all seeds. A per-image value takes few distinct
    values, so a resample of N images is drawn as multinomial counts over those values: the same distribution as
    drawing N image indices, at a fraction of the cost. The p-value is the two-sided share of centred resamples at
    least as far from 0 as the observed difference (at least 1 / samples).
    """
    rng = np.random.default_rng(seed)
    observed = 100.0 * float(sum(w * np.mean(d) for w, d in strata))
    boot = np.zeros(samples)
    for w, d in strata:
        vals, counts = np.unique(np.asarray(d, dtype=float), return_counts=True)
        draws = rng.multinomial(int(d.size), counts / counts.sum(), size=samples)
        boot += 100.0 * w * (draws @ vals) / d.size
    lo, hi = np.quantile(boot, [0.5 - confidence / 2, 0.5 + confidence / 2])
    far = float(np.mean(np.abs(boot - observed) >= abs(observed)))
    p = 1.0 if observed == 0 else max(far, 1.0 / samples)
    n_images = int(sum(d.size for _, d in strata))
    detail = f"{samples} resamples over {n_images} image pairs in {len(strata)} strata"
    return PairedResult("paired bootstrap over images", observed, n_images, p, float(lo), float(hi), detail)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (``None`` entries are left out of the family and stay ``None``)."""
    idx = [i for i, p in enumerate(ps) if p is not None]
    order = sorted(idx, key=lambda i: ps[i])  # type: ignore[arg-type, return-value]
    m = len(order)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(ps[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def verdict(res: PairedResult | None, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` when the (adjusted) p-value is below ``alpha``, else ``within noise``."""
    if res is None:
        return "n/a"
    p = res.p_adj if res.p_adj is not None else res.p
    if p is None:
        return "n/a"
    if p < alpha and res.diff != 0:
        return "better" if res.diff > 0 else "worse"
    return "within noise"


def vs_paper(iv: Interval | None, paper: float | None) -> str | None:
    """``inside`` / ``above`` / ``below`` our interval (``above``: the paper's number is higher than our interval);
    ``one seed`` without an interval; ``None`` when the paper has no number."""
    if paper is None or iv is None:
        return None
    inside = iv.contains(paper)
    if inside is None:
        return "one seed: no interval"
    if inside:
        return "inside"
    return "outside (paper above)" if paper > iv.hi else "outside (paper below)"  # type: ignore[operator]
