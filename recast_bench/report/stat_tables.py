"""The statistics tables of a backbone/stream: tests, continual-learning metrics, per-task transfer, task-agnostic.

Formulas: :mod:`recast_bench.report.metrics`; tests: :mod:`recast_bench.report.compare`. Every number is a mean
over seeds with its 95 % t interval (``_lo`` / ``_hi`` columns; none for one seed).
"""

from __future__ import annotations

from typing import Any

from recast_bench.report import metrics, stats
from recast_bench.report.analysis import TableAnalysis
from recast_bench.report.collect import Group
from recast_bench.report.compare import family_sizes
from recast_bench.report.table import Table, interval_table, interval_values

FWT_REFERENCE = "linear"
PLASTICITY_REFERENCE = "finetune"


def tests_table(ta: TableAnalysis) -> Table:
    """Every comparison of the table: both tests with difference, interval, raw and Holm p, and McNemar per seed."""
    cols = [
        "method",
        "reference",
        "test",
        "n",
        "diff",
        "diff_lo",
        "diff_hi",
        "p",
        "p_holm",
        "holm_family",
        "verdict",
        "detail",
    ]
    t = Table(key=f"tests_{ta.slug}", title=f"Paired tests, {ta.backbone} / {ta.stream}", columns=cols)
    sizes = family_sizes(ta.comparisons)
    for c in ta.comparisons:
        for attr, res in (("seeds", c.seeds), ("images", c.images)):
            name = "paired t over seeds" if attr == "seeds" else "paired bootstrap over images"
            if res is None:
                t.rows.append([c.group.label, c.reference.label, name] + [None] * 7 + ["n/a", None])
                continue
            t.rows.append(
                [
                    c.group.label,
                    c.reference.label,
                    res.test,
                    res.n,
                    res.diff,
                    res.lo,
                    res.hi,
                    res.p,
                    res.p_adj,
                    sizes[attr],
                    stats.verdict(res),
                    res.detail,
                ]
            )
        for seed, m in sorted(c.per_seed.items()):
            detail = f"b={m.b} (only the method right), c={m.c} (only the reference right), exact p={m.p_exact:.3g}"
            t.rows.append(
                [
                    c.group.label,
                    c.reference.label,
                    f"McNemar mid-p, seed {seed}",
                    m.n,
                    100.0 * (m.b - m.c) / m.n if m.n else None,
                    None,
                    None,
                    m.p_mid,
                    None,
                    None,
                    "not adjusted",
                    detail,
                ]
            )
    t.notes = [
        "diff: method minus reference, percentage points of average accuracy (McNemar rows: of accuracy over all "
        "test images pooled). diff_lo / diff_hi: its 95 % interval (t interval across seeds; bootstrap percentile "
        "interval over images).",
        "paired t over seeds: seed s of the method against seed s of the reference, n - 1 degrees of freedom; "
        "needs two paired seeds. It accounts for training randomness.",
        "paired bootstrap over images: images resampled with replacement within each task (the same images for "
        "every seed), statistic = seed-averaged difference in average accuracy; two-sided p from the centred "
        "resamples. It accounts for the finite test set, given the trained models. Needs predictions.safetensors.",
        "McNemar mid-p per seed (Fagerland et al. 2013): exact conditional test on the discordant images of one "
        "seed; shown for reading, not adjusted and not used for the marks.",
        f"Multiple comparisons: Holm-Bonferroni within each test over this table's comparisons (family sizes: seeds "
        f"{sizes['seeds']}, images {sizes['images']}); verdict: better / worse when p_holm < 0.05, else within "
        "noise.",
        *ta.notes,
        *sorted({n for c in ta.comparisons for n in c.notes}),
    ]
    return t


def _reference_diag(ref: Group | None, seed: int) -> list[float] | None:
    """The reference's diagonal for this seed, or the mean over its seeds when it did not run this one."""
    if ref is None:
        return None
    runs = ref.by_seed()
    if seed in runs:
        return metrics.diagonal(runs[seed]["acc_matrix"], runs[seed].get("completed_tasks"))
    diags = [d for d in (metrics.diagonal(r["acc_matrix"], r.get("completed_tasks")) for r in ref.runs) if d]
    if not diags:
        return None
    width = min(len(d) for d in diags)
    return [sum(d[j] for d in diags) / len(diags) for j in range(width)]


def per_seed_metrics(g: Group, fwt_ref: Group | None, ft_ref: Group | None) -> list[dict[str, Any]]:
    """Per run: the single-run metrics, forward transfer against ``fwt_ref`` and the per-task plasticity gap."""
    out = []
    same_fwt = fwt_ref is not None and fwt_ref.tasks == g.tasks and fwt_ref is not g
    same_ft = ft_ref is not None and ft_ref.tasks == g.tasks and ft_ref is not g
    for r in g.runs:
        m, k, seed = r["acc_matrix"], r.get("completed_tasks"), int(r["seed"])
        rec: dict[str, Any] = metrics.run_metrics(r)
        diag = metrics.diagonal(m, k) or []
        ref_d = _reference_diag(fwt_ref, seed) if same_fwt else None
        rec["fwt"] = metrics.forward_transfer(m, ref_d, k) if ref_d else None
        rec["fwt_task"] = [d - ref_d[j] if ref_d and j < len(ref_d) else None for j, d in enumerate(diag)]
        ft_d = _reference_diag(ft_ref, seed) if same_ft else None
        gaps = metrics.plasticity_gap(m, ft_d, k) if ft_d else [None] * len(g.tasks)
        rec["gap_task"] = gaps
        known = [x for x in gaps if x is not None]
        rec["plasticity_gap"] = sum(known) / len(known) if known and len(known) == len(g.tasks) else None
        rec["forgetting_task"] = metrics.forgetting_per_task(m, k) or []
        out.append(rec)
    return out


METRIC_KEYS = ("avg_acc", "avg_inc_acc", "bwt", "forgetting", "fwt", "plasticity_gap")


def metrics_table(ta: TableAnalysis) -> Table:
    """Average accuracy, average incremental accuracy, BWT, forgetting, FWT and the mean plasticity gap."""
    fwt_ref, ft_ref = ta.reference(FWT_REFERENCE), ta.reference(PLASTICITY_REFERENCE)
    t = interval_table(
        f"metrics_{ta.slug}",
        f"Continual-learning metrics, {ta.backbone} / {ta.stream}",
        ["method", "seeds"],
        list(METRIC_KEYS),
    )
    for g in ta.members:
        recs = per_seed_metrics(g, fwt_ref, ft_ref)
        row: list[Any] = [g.label, len(g.runs)]
        for k in METRIC_KEYS:
            row += interval_values(stats.t_interval([r[k] for r in recs]))
        t.rows.append(row)
    t.notes = [
        "Mean over seeds ± the half-width of the 95 % t interval (one seed: no interval). Formulas: the report's "
        "README (section Metrics). All in percentage points.",
        f"fwt: forward transfer against the `{FWT_REFERENCE}` row of this table (same seed where it ran it, else "
        f"the mean over its seeds); plasticity_gap: mean over tasks of `{PLASTICITY_REFERENCE}`'s just-learnt "
        "accuracy minus this row's (positive: less plastic than fine-tuning).",
    ]
    for name, ref in ((FWT_REFERENCE, fwt_ref), (PLASTICITY_REFERENCE, ft_ref)):
        if ref is None:
            what = "fwt" if name == FWT_REFERENCE else "plasticity_gap"
            t.notes.append(f"{what}: skipped, no `{name}` run on {ta.backbone}/{ta.stream} among the inputs.")
    return t


def transfer_table(ta: TableAnalysis) -> Table:
    """Per task: forward transfer against ``linear``, plasticity gap to ``finetune`` and forgetting."""
    fwt_ref, ft_ref = ta.reference(FWT_REFERENCE), ta.reference(PLASTICITY_REFERENCE)
    tasks = ta.members[0].tasks
    keys = [f"{kind}_{task}" for task in tasks for kind in ("fwt", "gap", "forgetting")]
    t = interval_table(
        f"transfer_{ta.slug}", f"Per-task transfer, {ta.backbone} / {ta.stream}", ["method", "seeds"], keys
    )
    for g in ta.members:
        recs = per_seed_metrics(g, fwt_ref, ft_ref) if g.tasks == tasks else []
        row: list[Any] = [g.label, len(g.runs)]
        for j in range(len(tasks)):
            for key in ("fwt_task", "gap_task", "forgetting_task"):
                vals = [r[key][j] if j < len(r[key]) else None for r in recs]
                row += interval_values(stats.t_interval(vals))
        t.rows.append(row)
    t.notes = [
        f"fwt_<task>: accuracy on the task just after learning it minus `{FWT_REFERENCE}`'s (the first task enters "
        "no FWT mean: nothing came before it); gap_<task>: `finetune`'s just-learnt accuracy minus this row's; "
        "forgetting_<task>: best accuracy the task ever had minus its final one (none for the last task).",
        "Mean over seeds ± the half-width of the 95 % t interval (one seed: no interval).",
    ]
    return t


TASK_AGNOSTIC_KEYS = ("task_aware_acc", "task_agnostic_acc", "task_id_acc")


def task_agnostic_table(ta: TableAnalysis) -> Table | None:
    """Task-aware accuracy (task id given, the tables' number) beside task-agnostic accuracy and task-id accuracy."""
    if not any(r.get("task_agnostic") for g in ta.members for r in g.runs):
        return None
    t = interval_table(
        f"task_agnostic_{ta.slug}",
        f"Task-aware and task-agnostic accuracy, {ta.backbone} / {ta.stream}",
        ["method", "seeds", "rule"],
        list(TASK_AGNOSTIC_KEYS),
    )
    lacking = []
    for g in ta.members:
        agn = [r.get("task_agnostic") for r in g.runs]
        if not any(agn):
            lacking.append(g.label)
            continue
        runs = [r for r, a in zip(g.runs, agn) if a]
        rules = sorted({str(a.get("rule")) for a in agn if a})
        row: list[Any] = [g.label, len(runs), ", ".join(rules)]
        row += interval_values(stats.t_interval([r.get("avg_acc") for r in runs]))
        row += interval_values(stats.t_interval([a.get("acc") for a in agn if a]))
        row += interval_values(stats.t_interval([a.get("task_id_acc") for a in agn if a]))
        t.rows.append(row)
    t.notes = [
        "task_aware_acc: the tables' average accuracy, the task id given at test time (each task's own head and "
        "state).",
        "task_agnostic_acc: % of all seen tasks' test images (pooled) classified right when the task id is not "
        "given: the rule picks the task, then its head picks the class; right task and right class.",
        "task_id_acc: % of those images whose task the rule picks right. rule: how the task is chosen "
        "(max_softmax: the task whose head is most confident; min_entropy: the lowest-entropy head).",
        "Mean over the seeds that recorded it ± the half-width of the 95 % t interval (one seed: no interval).",
    ]
    if lacking:
        t.notes.append(f"No task-agnostic evaluation recorded for: {', '.join(lacking)}.")
    if len({r.get("rule") for g in ta.members for r in (x.get("task_agnostic") or {} for x in g.runs) if r}) > 1:
        t.notes.append("Rows use different rules: compare task-agnostic numbers only between rows of one rule.")
    return t
