"""Paired comparisons of one report table's rows against its reference rows (``linear``, and ``recast`` when run).

Two tests per (row, reference) pair, each answering a different question:

* **across seeds** (:func:`~recast_bench.report.stats.paired_t`): does the method differ from the reference once the
  training randomness is accounted for? Seed s of the method is paired with seed s of the reference.
* **over test images** (:func:`~recast_bench.report.stats.paired_bootstrap` of the seed-averaged difference, and
  McNemar's mid-p test per seed): do the trained models differ on this test set? It needs both runs'
  ``predictions.safetensors``; a run without one is named in the notes and only the seed test is made.

Holm-Bonferroni adjusts each test's p-values over all comparisons of the table (one family per test), so the
better / worse marks of a table hold together at the 5 % level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recast_bench.report import stats
from recast_bench.report.collect import Group
from recast_bench.report.predictions import Predictions, load_predictions

REFERENCES = ("linear", "recast")
PREDICTION_TOLERANCE = 0.01
"""Percentage points: predictions whose accuracy differs more from results.json's final row are stale."""


@dataclass
class Comparison:
    """One row against one reference: both tests, and why a test could not be made."""

    group: Group
    reference: Group
    seeds: stats.PairedResult | None = None
    images: stats.PairedResult | None = None
    per_seed: dict[int, stats.McNemar] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pick_reference(members: list[Group], method: str) -> Group | None:
    """The table's row for ``method``: the plain one (no variant, no settings tag) when there is one."""
    found = [g for g in members if g.method == method]
    plain = [g for g in found if g.variant is None and g.tag is None]
    return (plain or found or [None])[0]


def predictions_of(run: dict) -> Predictions | None:
    """The run's predictions (read once per run and kept on the run dict)."""
    if "_predictions" not in run:
        run["_predictions"] = load_predictions(run["_dir"])
    return run["_predictions"]


def final_predictions(run: dict) -> tuple[Predictions | None, str | None]:
    """The run's final predictions, or ``None`` and the reason they cannot be used."""
    p = predictions_of(run)
    if p is None:
        return None, f"{run['_dir']} has no predictions.safetensors (a run from before they were recorded)"
    missing = [t for t in run["tasks"] if t not in p.pred]
    if missing:
        return None, f"{run['_dir']}: predictions lack {', '.join(missing)} (written before the last task)"
    for j, t in enumerate(run["tasks"]):
        acc = 100.0 * float(np.mean(p.right(t))) if p.pred[t].size else None
        want = run["final_acc"][j]
        if acc is None or want is None or abs(acc - want) > PREDICTION_TOLERANCE:
            return None, f"{run['_dir']}: predictions of {t} give {acc} % but results.json says {want} (stale file)"
    return p, None


def different_test_splits(a: dict, b: dict, tasks: list[str]) -> list[str]:
    """Tasks whose recorded test-split hashes differ between two runs (none known: none differ)."""
    ha, hb = a.get("split_hashes") or {}, b.get("split_hashes") or {}
    return [t for t in tasks if t in ha and t in hb and (ha[t] or {}).get("test") != (hb[t] or {}).get("test")]


def seed_test(g: Group, ref: Group, key: str = "avg_acc") -> tuple[stats.PairedResult | None, str | None]:
    """Paired t over the seeds both rows ran."""
    mine, theirs = g.by_seed(), ref.by_seed()
    common = sorted(set(mine) & set(theirs))
    a = [mine[s].get(key) for s in common]
    b = [theirs[s].get(key) for s in common]
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 2:
        why = "one seed" if len(pairs) == 1 else "no seed in common"
        return None, f"{g.label} vs {ref.label}: no test across seeds ({why}; needs two paired seeds)"
    return stats.paired_t([x for x, _ in pairs], [y for _, y in pairs]), None


def image_test(g: Group, ref: Group) -> tuple[stats.PairedResult | None, dict[int, stats.McNemar], list[str]]:
    """Paired bootstrap over test images (seed-averaged) and McNemar per seed, on the seeds both rows have."""
    mine, theirs = g.by_seed(), ref.by_seed()
    notes: list[str] = []
    per_seed: dict[int, stats.McNemar] = {}
    rights: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    for s in sorted(set(mine) & set(theirs)):
        other = different_test_splits(mine[s], theirs[s], g.tasks)
        if other:
            notes.append(
                f"{g.label} vs {ref.label}, seed {s}: split_hashes say the test sets of {', '.join(other)} "
                "differ; no test over images"
            )
            continue
        pm, why_m = final_predictions(mine[s])
        pr, why_r = final_predictions(theirs[s])
        if pm is None or pr is None:
            notes += [w for w in (why_m, why_r) if w]
            continue
        bad = [
            t for t in g.tasks if pm.label[t].shape != pr.label[t].shape or not np.array_equal(pm.label[t], pr.label[t])
        ]
        if bad:
            notes.append(f"{g.label} vs {ref.label}, seed {s}: the test labels of {', '.join(bad)} differ")
            continue
        rights[s] = {t: (pm.right(t), pr.right(t)) for t in g.tasks}
        for t in g.tasks:
            labels.setdefault(t, []).append(pm.label[t])
        cat = [np.concatenate([rights[s][t][k] for t in g.tasks]) for k in (0, 1)]
        per_seed[s] = stats.mcnemar(cat[0], cat[1])
    if not rights:
        return None, per_seed, notes
    same_images = all(all(np.array_equal(ls[0], x) for x in ls[1:]) for ls in labels.values())
    strata: list[tuple[float, np.ndarray]] = []
    for t in g.tasks:
        diffs = [rights[s][t][0].astype(float) - rights[s][t][1].astype(float) for s in rights]
        if same_images:  # one test set for every seed: resample its images once for all seeds
            strata.append((1.0 / len(g.tasks), np.mean(diffs, axis=0)))
        else:  # a seed-dependent split: each seed's test images are their own stratum
            strata += [(1.0 / (len(g.tasks) * len(diffs)), d) for d in diffs]
    if not same_images:
        notes.append(f"{g.label}: test images differ between seeds; each seed's images are resampled on their own")
    return stats.paired_bootstrap(strata), per_seed, notes


def table_comparisons(
    members: list[Group], references: tuple[str, ...] = REFERENCES
) -> tuple[list[Comparison], list[str]]:
    """Every row against every reference row present, with Holm-adjusted p-values; plus notes on what was skipped."""
    notes: list[str] = []
    comps: list[Comparison] = []
    for name in references:
        ref = pick_reference(members, name)
        if ref is None:
            notes.append(f"no `{name}` row in this table: no comparisons against {name}")
            continue
        for g in members:
            if g is ref:
                continue
            c = Comparison(g, ref)
            if g.tasks != ref.tasks:
                c.notes.append(f"{g.label} and {ref.label} ran different tasks: not compared")
            else:
                c.seeds, why = seed_test(g, ref)
                c.notes += [why] if why else []
                c.images, c.per_seed, more = image_test(g, ref)
                c.notes += more
            comps.append(c)
    for attr in ("seeds", "images"):
        adjusted = stats.holm([getattr(c, attr).p if getattr(c, attr) else None for c in comps])
        for c, p_adj in zip(comps, adjusted):
            if getattr(c, attr) is not None:
                setattr(c, attr, getattr(c, attr).with_adjusted(p_adj))
    return comps, notes


def family_sizes(comps: list[Comparison]) -> dict[str, int]:
    """How many comparisons each test's Holm family holds."""
    return {attr: sum(getattr(c, attr) is not None for c in comps) for attr in ("seeds", "images")}


def mark(res: stats.PairedResult | None) -> str:
    """``better (p=0.012)`` / ``within noise (p=0.41)`` / ``n/a``; p is the Holm-adjusted one."""
    v = stats.verdict(res)
    if res is None or v == "n/a":
        return "n/a"
    p = res.p_adj if res.p_adj is not None else res.p
    return f"{v} (p={p:.2g})"
