"""The cost-accuracy front: accuracy against four per-task or per-run costs, the Pareto-optimal rows, one figure.

Axes (x, lower is cheaper): bytes of per-task state (head excluded), trainable parameters per task (head
excluded), the run's compute (GPU-hours = wall hours x GPUs for a run on CUDA; wall hours on a CPU, labelled as
such), and the task-switch time (``task_switch_ms``, results schema 2). A row is Pareto-optimal on an axis when no
other row is at most as costly and at least as accurate, and strictly better in one of the two.

The paper's rows are marked beside ours where the paper gives a number: parameters per task as its fraction of P
(the protocol card's P: ViT-S 22.05M, ResNet-34 21.8M), bytes as those parameters in fp32 (4 bytes each: the paper
reports storage only symbolically). The paper reports no compute or switch times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recast_bench.report import paper
from recast_bench.report.analysis import TableAnalysis
from recast_bench.report.collect import Group
from recast_bench.report.table import Table, ci_cell, interval_values

BYTES_PER_PARAM = 4


def gpu_count(res: dict) -> int:
    """GPUs a run held: ``trainer.devices`` (an int, a list or "0,1") times ``trainer.num_nodes``."""
    tr = (res.get("config") or {}).get("trainer") or {}
    dev = tr.get("devices", 1)
    if isinstance(dev, str):
        dev = len([d for d in dev.split(",") if d.strip()]) if "," in dev else (int(dev) if dev.isdigit() else 1)
    elif isinstance(dev, list | tuple):
        dev = len(dev)
    return max(int(dev or 1), 1) * max(int(tr.get("num_nodes") or 1), 1)


def compute_hours(res: dict) -> tuple[float | None, str]:
    """``(hours, kind)``: GPU-hours on CUDA (wall x GPUs), else CPU wall hours; kind ``gpu`` or ``cpu``."""
    wall = res.get("wall_s")
    if wall is None:
        return None, "unknown"
    on_gpu = str(res.get("device") or "").startswith("cuda")
    return (float(wall) * gpu_count(res) / 3600.0, "gpu") if on_gpu else (float(wall) / 3600.0, "cpu")


@dataclass(frozen=True)
class Axis:
    key: str
    label: str
    log: bool = True


AXES = (
    Axis("bytes_per_task", "bytes of per-task state (head excluded)"),
    Axis("params_per_task", "trainable parameters per task (head excluded)"),
    Axis("compute_hours", "compute per run"),
    Axis("task_switch_ms", "task-switch time"),
)


def group_costs(g: Group) -> dict[str, Any]:
    """A row's costs on every axis (``None`` where unknown) and the kind of its compute hours."""
    hours = [compute_hours(r) for r in g.runs]
    kinds = {k for _, k in hours}
    known_h = [h for h, _ in hours if h is not None]
    switch = [float(r["task_switch_ms"]) for r in g.runs if r.get("task_switch_ms") is not None]
    return {
        "bytes_per_task": g.bytes_per_task(),
        "params_per_task": g.params_per_task(),
        "compute_hours": sum(known_h) / len(known_h) if known_h and len(kinds) == 1 else None,
        "compute_kind": kinds.pop() if len(kinds) == 1 else "mixed",
        "task_switch_ms": sum(switch) / len(switch) if switch else None,
    }


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For each (cost, accuracy): whether no other point is cheaper-or-equal and better-or-equal, one strictly."""
    flags = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for k, (c2, a2) in enumerate(points) if k != i)
        flags.append(not dominated)
    return flags


def paper_points(ta: TableAnalysis) -> list[dict[str, Any]]:
    """The paper's rows with a per-task fraction: label, accuracy, parameters and fp32 bytes per task."""
    from recast_bench.protocol import load

    header, _ = load(ta.paper_table.split("_")[0])
    total = header.get("total_params")
    out = []
    for row in paper.load(ta.paper_table)["rows"]:
        if row.get("fraction") is None or not total:
            continue
        params = row["fraction"] * total
        out.append(
            {
                "label": row["label"],
                "acc": row["acc"],
                "params_per_task": params,
                "bytes_per_task": params * BYTES_PER_PARAM,
            }
        )
    return out


def front_table(ta: TableAnalysis) -> tuple[Table, list[str]]:
    """The Pareto-optimal rows on each axis, and notes on axes that were skipped (and why)."""
    cols = ["axis", "method", "seeds", "cost", "cost_unit", "acc", "acc_lo", "acc_hi"]
    t = Table(
        key=f"front_{ta.slug}",
        title=f"Cost-accuracy front (Pareto-optimal rows), {ta.backbone} / {ta.stream}",
        columns=cols,
        md_cells={"acc": ci_cell("acc", n="seeds")},
        md_columns=["axis", "method", "seeds", "cost", "cost_unit", "acc"],
    )
    skipped: list[str] = []
    for axis, pts in axis_points(ta, skipped).items():
        flags = pareto([(c, iv.mean) for _, c, iv, _ in pts])
        for (g, cost, iv, unit), on in sorted(zip(pts, flags), key=lambda x: x[0][1]):
            if on:
                t.rows.append([axis.key, g.label, len(g.runs), cost, unit, *interval_values(iv)])
    t.notes = [
        "A row is on the front when no other row is at most as costly and at least as accurate (one strictly).",
        "acc: average accuracy, mean over seeds ± the half-width of its 95 % t interval (one seed: no interval).",
        "compute_hours: the run's wall time x GPUs on CUDA (GPU-hours), or its wall time on a CPU (CPU wall hours; "
        "not GPU-hours), mean over seeds; it includes Neural Mimicry and evaluation, not only training.",
        *skipped,
    ]
    return t, skipped


def axis_points(ta: TableAnalysis, skipped: list[str]) -> dict[Axis, list[tuple[Group, float, Any, str]]]:
    """Per axis: ``(group, cost, accuracy interval, unit)`` of every row with both numbers; skips noted."""
    out: dict[Axis, list] = {}
    costs = {id(g): group_costs(g) for g in ta.members}
    for axis in AXES:
        pts = []
        kinds = {costs[id(g)]["compute_kind"] for g in ta.members}
        for g in ta.members:
            iv, cost = g.interval(), costs[id(g)][axis.key]
            if iv is None or cost is None:
                continue
            unit = {"bytes_per_task": "bytes", "params_per_task": "parameters", "task_switch_ms": "ms"}.get(axis.key)
            pts.append((g, float(cost), iv, unit or f"{costs[id(g)]['compute_kind'].upper()} hours"))
        if axis.key == "compute_hours" and len(kinds - {"unknown"}) > 1:
            skipped.append(
                f"front on compute: skipped, rows mix GPU and CPU runs ({', '.join(sorted(kinds))}); "
                "GPU-hours and CPU wall hours are not one axis"
            )
            continue
        if len(pts) < 1:
            why = (
                "no run records task_switch_ms (results schema 1, or a runner that does not time switches)"
                if (axis.key == "task_switch_ms")
                else "no row has this cost"
            )
            skipped.append(f"front on {axis.key}: skipped, {why}")
            continue
        out[axis] = pts
    return out


def front_figure(ta: TableAnalysis, out: Path) -> Path:
    """One PNG, a panel per axis: our rows (95 % t interval bars), the front as a step line, the paper's rows."""
    from recast_bench.report.figures import Skip, _plt, _save, colours

    skipped: list[str] = []
    panels = axis_points(ta, skipped)
    if not panels:
        raise Skip(f"no row of {ta.backbone}/{ta.stream} has a cost and an accuracy")
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    theirs = paper_points(ta)
    colour = dict(zip((g.label for g in ta.members), colours(len(ta.members))))  # one colour per row
    for ax, (axis, pts) in zip(axes[0], panels.items()):
        xs = [max(c, _floor(axis)) for _, c, _, _ in pts]
        for (g, _c, iv, _u), x in zip(pts, xs):
            err = None if iv.lo is None else [[iv.mean - iv.lo], [iv.hi - iv.mean]]
            ax.errorbar([x], [iv.mean], yerr=err, fmt="o", ms=5, capsize=3, color=colour[g.label])
            ax.annotate(g.label, (x, iv.mean), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
        flags = pareto([(c, iv.mean) for _, c, iv, _ in pts])
        front = sorted((x, iv.mean) for (_, _, iv, _), x, on in zip(pts, xs, flags) if on)
        if front:
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="k",
                lw=1,
                alpha=0.6,
                label="our front",
            )
        if axis.key in ("bytes_per_task", "params_per_task") and theirs:
            px = [max(p[axis.key], _floor(axis)) for p in theirs]
            ax.scatter(px, [p["acc"] for p in theirs], marker="x", c="grey", label=f"paper ({ta.paper_table})")
            for p, x in zip(theirs, px):
                ax.annotate(
                    p["label"], (x, p["acc"]), fontsize=5.5, color="grey", xytext=(3, -8), textcoords="offset points"
                )
        paper_xs = [max(p[axis.key], _floor(axis)) for p in theirs] if axis.key.endswith("_per_task") else []
        every = xs + paper_xs
        if max(every) / min(every) > 20:  # log only where the costs span decades (a narrow range reads better plain)
            ax.set_xscale("log")
            # Plain tick labels: matplotlib's default 10^k labels go through mathtext, most of this figure's cost.
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _tick(v)))
            few = max(every) / min(every) < 1000  # under three decades: label the 2s and 5s too
            ax.xaxis.set_minor_formatter(FuncFormatter(_minor_tick) if few else NullFormatter())
        unit = pts[0][3]
        zero = "; 0 drawn at 1" if axis.key.endswith("_per_task") else ""
        ax.set_xlabel(f"{axis.label} [{unit}]{zero}", fontsize=8)
        ax.set_ylabel("average top-1 (%), 95 % t interval")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -2.0), min(hi, 102.0))  # an interval may pass 0 or 100; accuracy cannot
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    note = (
        ""
        if ta.backbone == paper.load(ta.paper_table)["backbone"]
        else (f"; paper rows are on {paper.load(ta.paper_table)['backbone']}, ours on {ta.backbone}")
    )
    fig.suptitle(f"Cost-accuracy front, {ta.backbone} / {ta.stream}{note}", fontsize=10)
    return _save(fig, out / f"front_{ta.slug}.png")


def _tick(v: float) -> str:
    """``1e5`` rather than ``100000``: tick labels of a log axis stay short."""
    if v >= 1e4 or 0 < v < 1e-2:
        mant, exp = f"{v:.0e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:g}"


def _minor_tick(v: float, _pos: int) -> str:
    lead = f"{v:.0e}"[0]
    return _tick(v) if lead in "25" else ""


def _floor(axis: Axis) -> float:
    """Where a zero cost is drawn on a log axis (a linear probe has 0 parameters and bytes)."""
    return 1.0 if axis.key.endswith("_per_task") else 1e-6
