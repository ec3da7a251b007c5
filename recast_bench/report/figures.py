"""The paper's figures from our runs and mimic reports (PNG, matplotlib Agg).

Each ``figure*`` function returns the written paths, or raises :class:`Skip` with the reason when its inputs are
missing, so ``report`` can list in its README what was produced and what was not.
"""

from __future__ import annotations

import re
from pathlib import Path

from recast_bench.report import paper
from recast_bench.report.analysis import TableAnalysis
from recast_bench.report.collect import Group, Inputs, label_of, recast_settings
from recast_bench.report.stats import Interval, t_interval


class Skip(Exception):
    """A figure whose inputs are missing; the message says which."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, tight: bool = False) -> Path:  # noqa: ANN001
    """Write a PNG; ``tight`` crops to the drawn area (for a legend outside the axes; it renders twice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight" if tight else None)
    _plt().close(fig)
    return path


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s)


def colours(n: int) -> list:
    """``n`` distinct colours: matplotlib's default cycle up to 10, tab20 beyond (the default repeats after 10)."""
    plt = _plt()
    if n <= 10:
        return plt.rcParams["axes.prop_cycle"].by_key()["color"][:n] or ["C0"]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _yerr(iv: Interval) -> list[list[float]] | None:
    """Asymmetric error bar of a t interval; ``None`` (no bar) for one seed."""
    return None if iv.lo is None else [[iv.mean - iv.lo], [iv.hi - iv.mean]]  # type: ignore[operator]


def figure3(groups: list[Group], out: Path) -> list[Path]:
    """Accuracy vs per-task learnt parameters (log x), one panel per backbone/stream, paper points where known."""
    pairs = sorted({(g.backbone, g.stream) for g in groups if g.params_per_task() is not None})
    if not pairs:
        raise Skip("no complete runs")
    plt = _plt()
    written = []
    for backbone, stream in pairs:
        fig, ax = plt.subplots(figsize=(9.5, 4.8))
        members = [g for g in groups if (g.backbone, g.stream) == (backbone, stream)]
        for g, colour in zip(members, colours(len(members))):
            iv = g.interval()
            if iv is None:
                continue
            x = max(g.params_per_task() or 0, 1)  # 0 learnt params (linear probe) sits at 1 on the log axis
            ax.errorbar([x], [iv.mean], yerr=_yerr(iv), fmt="o", capsize=3, label=g.label, color=colour)
            ax.annotate(g.label, (x, iv.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        table = paper.load(paper.main_table_for(backbone))
        bb = max((g.backbone_params() or 0) for g in members)
        if backbone == table["backbone"] and bb:
            pts = [
                (max(r["fraction"] * bb, 1), r["acc"], r["label"]) for r in table["rows"] if r["fraction"] is not None
            ]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="x", c="grey", label="paper (Table)")
            for x, y, lab in pts:
                ax.annotate(lab, (x, y), fontsize=6, color="grey", xytext=(3, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("learnt parameters per task (head excluded; 0 drawn at 1)")
        ax.set_ylabel("average top-1 (%), bars: 95 % t interval")
        ax.set_title(f"Figure 3: accuracy vs per-task parameters ({backbone}, {stream})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: points stay visible
        written.append(_save(fig, out / f"figure3_{backbone}_{stream}.png"))
    return written


def figure4(groups: list[Group], out: Path) -> list[Path]:
    """Backbone scales: average accuracy per backbone for the linear baseline and RECAST."""
    picked = [g for g in groups if g.method in ("linear", "recast")]
    if not picked:
        raise Skip("no linear or recast runs")
    plt = _plt()
    written = []
    for stream in sorted({g.stream for g in picked}):
        members = [g for g in picked if g.stream == stream]
        backbones = sorted(
            {g.backbone for g in members},
            key=lambda b: (max(x.backbone_params() or 0 for x in members if x.backbone == b), b),
        )
        labels = sorted({g.label for g in members})
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(backbones), 3.8))
        width = 0.8 / len(labels)
        for i, lab in enumerate(labels):
            xs, ys, es = [], [], []
            for k, b in enumerate(backbones):
                g = next((g for g in members if g.backbone == b and g.label == lab), None)
                iv = g.interval() if g is not None else None
                if iv is not None:
                    xs.append(k + i * width)
                    ys.append(iv.mean)
                    es.append(0.0 if iv.half is None else iv.half)  # one seed: a bar without an error bar
            ax.bar(xs, ys, width, yerr=es if any(es) else None, capsize=3, label=lab)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(backbones))], backbones)
        ax.set_ylabel("average top-1 (%), bars: 95 % t interval")
        ax.set_title(f"Figure 4: backbone scales ({stream})", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        written.append(_save(fig, out / f"figure4_{stream}.png"))
    return written


def figure5(groups: list[Group], inp: Inputs, out: Path) -> list[Path]:
    """Reconstruction variants: similarity per mimicry loss (mimic reports) and accuracy per loss (recast runs)."""
    sims = {}
    for rep in inp.mimic:
        loss = (rep.get("mimicry") or {}).get("loss", "?")
        key = f"{rep['backbone']} {loss}"
        sims[key] = 100.0 * (rep.get("outputs") or {}).get("feature_cosine_mean", float("nan"))
    accs: dict[str, list[float]] = {}
    for g in groups:
        for r in g.runs:
            s = recast_settings(r)
            if s and g.method == "recast" and r["avg_acc"] is not None:
                accs.setdefault(f"{g.backbone} {s['mimic_loss']}", []).append(r["avg_acc"])
    if not sims and len(accs) < 2:
        raise Skip("needs mimic report.json files, or recast runs with at least two mimic losses")
    plt = _plt()
    panels = [p for p in (("similarity", sims), ("accuracy", accs)) if p[1] and (p[0] == "similarity" or len(p[1]) > 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (kind, data) in zip(axes[0], panels):
        keys = sorted(data)
        vals = [data[k] if kind == "similarity" else sum(data[k]) / len(data[k]) for k in keys]
        ax.bar(range(len(keys)), vals)
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=7)
        if kind == "similarity":
            ax.axhline(
                paper.load("figures")["figure5"]["min_similarity"], color="grey", ls="--", label="paper min 98.5%"
            )
            ax.set_ylabel("feature similarity (%)")
            ax.set_ylim(min(vals + [98.0]) - 0.5, 100.2)
            ax.legend(fontsize=7)
        else:
            ax.set_ylabel("average top-1 (%)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Figure 5: reconstruction variants", fontsize=10)
    return [_save(fig, out / "figure5_reconstruction.png")]


def figure6(groups: list[Group], out: Path) -> list[Path]:
    """G/n/K scaling: accuracy vs per-task parameters of RECAST runs with different groups/templates/sets."""
    points: dict[tuple, list] = {}
    for g in groups:
        if g.method != "recast":
            continue
        for r in g.runs:
            s = recast_settings(r)
            key = (g.backbone, g.stream, s["target"], s["groups"], s["templates"], s["sets"], s["sharing"])
            points.setdefault(key, []).append((r["avg_acc"], max(p or 0 for p in r["trainable_params_per_task"])))
    by_panel: dict[tuple, list] = {}
    for key, vals in points.items():
        by_panel.setdefault(key[:2], []).append((key[2:], vals))
    by_panel = {k: v for k, v in by_panel.items() if len(v) > 1}
    if not by_panel:
        raise Skip(
            "needs recast runs on one backbone/stream with at least two G/n/K/target settings "
            "(conf/experiment/recast_gnk.yaml, recast_targets.yaml)"
        )
    plt = _plt()
    written = []
    for (backbone, stream), entries in sorted(by_panel.items()):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        targets = sorted({e[0][0] for e in entries})
        colors = dict(zip(targets, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        top = max(max(p for _, p in vals) for _, vals in entries) or 1
        for (target, g_, n, k, sharing), vals in sorted(entries, key=lambda e: str(e[0])):
            acc = sum(a for a, _ in vals) / len(vals)
            params = max(p for _, p in vals)
            ax.scatter([params], [acc], s=30 + 300 * params / top, color=colors[target], alpha=0.7)
            ax.annotate(
                f"G{g_} n{n} K{k}" + (f" {sharing}" if sharing else ""),
                (params, acc),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        for t in targets:
            ax.scatter([], [], color=colors[t], label=t)
        ax.set_xlabel("coefficients per task")
        ax.set_ylabel("average top-1 (%)")
        ax.set_title(f"Figure 6: G / n / K and targets ({backbone}, {stream}); marker size ~ coefficients", fontsize=9)
        ax.legend(fontsize=7, title="target")
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, out / f"figure6_{backbone}_{stream}.png"))
    return written


def _mimic_name(rep: dict) -> str:
    spec = rep.get("spec") or {}
    return f"{rep['backbone']} {spec.get('target')} {(rep.get('mimicry') or {}).get('loss')}"


def figure7_8(inp: Inputs, out: Path) -> list[Path]:
    """Diversity per group (appendix A.3): Figure 7 Frobenius distance and entropy, Figure 8 coefficient cosine."""
    reps = [r for r in inp.mimic if (r.get("diversity") or {}).get("groups")]
    if not reps:
        raise Skip("no mimic report.json with diversity metrics")
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig7, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    fig8, ax8 = plt.subplots(figsize=(5.5, 3.6))
    for rep in reps:
        groups = rep["diversity"]["groups"]
        keys = sorted(groups, key=int)
        for ax, metric in zip(list(axes) + [ax8], ("frobenius", "entropy", "coef_similarity")):
            xs = [int(k) for k in keys if groups[k].get(metric) is not None]
            ax.plot(xs, [groups[str(x)][metric] for x in xs], marker="o", label=_mimic_name(rep))
    for ax, title in zip(
        list(axes) + [ax8],
        ("(7a) template Frobenius distance", "(7b) singular-value entropy", "Figure 8: intra-group coefficient cosine"),
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("group")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # groups are whole numbers
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig7.suptitle("Figure 7: template diversity per group", fontsize=10)
    return [_save(fig7, out / "figure7_diversity.png"), _save(fig8, out / "figure8_coef_similarity.png")]


def heatmaps(runs: list[dict], out: Path) -> list[Path]:
    """The accuracy matrix of each run: row i = after training task i, column j = test accuracy on task j."""
    if not runs:
        raise Skip("no complete runs")
    import numpy as np

    plt = _plt()
    written = []
    for r in runs:
        n = len(r["tasks"])
        m = np.array([[np.nan if v is None else v for v in row] for row in r["acc_matrix"]], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for i in range(n):
            for j in range(n):
                if not np.isnan(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] < 60 else "black",
                    )
        ax.set_xticks(range(n), r["tasks"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), r["tasks"], fontsize=7)
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("after training")
        ax.set_title(f"{label_of(r)} {r['backbone']} s{r['seed']}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
        name = _slug(f"{label_of(r)}-{r['backbone']}-{r['stream']}-s{r['seed']}")
        written.append(_save(fig, out / "heatmaps" / f"{name}.png"))
    return written


def task_curves(ta: TableAnalysis, out: Path) -> Path:
    """Per task, its test accuracy after each training step (mean over seeds; shaded: 95 % t interval)."""
    import numpy as np

    tasks = ta.members[0].tasks
    members = [g for g in ta.members if g.tasks == tasks]
    if len(tasks) < 2:
        raise Skip("one task: no curve to draw")
    plt = _plt()
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    palette = colours(len(members))
    shade = len(members) <= 6  # more bands than that hide each other; the lines stay
    for j, task in enumerate(tasks):
        ax = axes[j // cols][j % cols]
        for g, colour in zip(members, palette):
            steps = list(range(j, len(tasks)))
            ivs = [t_interval([r["acc_matrix"][i][j] for r in g.runs]) for i in steps]
            keep = [(i, iv) for i, iv in zip(steps, ivs) if iv is not None]
            if not keep:
                continue
            x = np.array([i + 1 for i, _ in keep])
            ax.plot(x, [iv.mean for _, iv in keep], marker="o", ms=3, label=g.label, color=colour)
            if shade and all(iv.lo is not None for _, iv in keep):
                ax.fill_between(x, [iv.lo for _, iv in keep], [iv.hi for _, iv in keep], color=colour, alpha=0.15)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -2.0), min(hi, 102.0))  # a band may pass 0 or 100; accuracy cannot
        ax.set_title(f"{task}", fontsize=9)
        ax.set_xlabel("after training task", fontsize=8)
        ax.set_ylabel("test top-1 (%)", fontsize=8)
        ax.set_xticks(range(1, len(tasks) + 1))
        ax.grid(True, alpha=0.3)
    for k in range(len(tasks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    band = "shaded: 95 % t interval" if shade else "means over seeds; intervals in the transfer table"
    fig.suptitle(f"Per-task accuracy over the stream, {ta.backbone} / {ta.stream} ({band})", fontsize=10)
    return _save(fig, out / f"curves_{ta.slug}.png", tight=True)
