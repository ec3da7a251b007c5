"""``make_report``: runs and reports in, paper-format tables (Markdown, CSV), figures (PNG) and a README out.

Every table and figure is attempted; one whose inputs are missing is skipped and the README says why. The README
follows ``README_template.md`` (how to read an interval and a test, the metric formulas).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from recast_bench.errors import UserError
from recast_bench.report import figures, front, schema, stat_tables, stats, tables
from recast_bench.report.analysis import TableAnalysis, analyse
from recast_bench.report.collect import Inputs, group_runs
from recast_bench.report.compare import predictions_of


@dataclass
class Report:
    out: Path
    tables: list[tables.Table] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    analyses: list[TableAnalysis] = field(default_factory=list)

    def main_tables(self) -> list[tables.Table]:
        return [t for t in self.tables if t.key.startswith(("table1_", "table2_"))]

    def protocol_tables(self) -> list[tables.Table]:
        return [t for t in self.tables if t.key.startswith("protocol_")]

    def readme_tables(self) -> list[tables.Table]:
        """Shown in the README: the paper tables, the metrics, the fronts, task-agnostic accuracy, the protocol."""
        first = ("table1_", "table2_", "metrics_", "front_", "task_agnostic_")
        return [t for p in first for t in self.tables if t.key.startswith(p)] + self.protocol_tables()


def _prepare(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report directory {out} ({e.strerror})") from None


def _stat_tables(rep: Report) -> None:
    for ta in rep.analyses:
        rep.tables += [stat_tables.tests_table(ta), stat_tables.metrics_table(ta), stat_tables.transfer_table(ta)]
        agn = stat_tables.task_agnostic_table(ta)
        if agn is None:
            rep.skipped.append(
                f"Task-agnostic accuracy ({ta.backbone}/{ta.stream}): no run records `task_agnostic` "
                "(not evaluated without task ids); only task-aware accuracy is shown"
            )
        else:
            rep.tables.append(agn)
        ft, skipped = front.front_table(ta)
        rep.tables.append(ft)
        rep.skipped += [f"Cost-accuracy front ({ta.backbone}/{ta.stream}): {s}" for s in skipped]


def _data_notes(inp: Inputs) -> list[str]:
    """What the runs lack beyond schema 1, one line per missing key (and for predictions files)."""
    notes = [n for key in ("timing", "task_switch_ms", "git_commit") if (n := schema.missing_note(inp.runs, key))]
    lacking = [r for r in inp.runs if predictions_of(r) is None]
    if lacking:
        names = ", ".join(Path(r["_dir"]).name for r in lacking[:4]) + (", ..." if len(lacking) > 4 else "")
        notes.append(
            f"tests over test images: not available for {len(lacking)} of {len(inp.runs)} runs ({names}): "
            "no predictions.safetensors (runs from before the engine wrote them); only the tests across "
            "seeds are made for them (`python -m recast_bench.report.predictions RUN...` writes the file from a "
            "finished run's stored task states)"
        )
    return notes


def make_report(inp: Inputs, out: str | Path) -> Report:
    """Write every table and figure the inputs allow under ``out``, plus ``README.md`` and ``index.json``."""
    out = Path(out)
    _prepare(out)
    rep = Report(out=out, skipped=list(inp.skipped))
    groups = group_runs(inp.runs)
    rep.analyses = analyse(groups)

    if groups:
        rep.tables += tables.main_tables(rep.analyses) + tables.protocol_tables(groups)
        rep.tables += tables.per_dataset_tables(rep.analyses)
        _stat_tables(rep)
        rep.tables.append(tables.run_index_table(inp.runs))
        rep.skipped += _data_notes(inp)
    else:
        rep.skipped.append("Tables 1, 2 and 4, tests, metrics and fronts: no complete results.json among the inputs")
    for name, t in (("Table 5", tables.mimicry_table(inp)), ("Table 6", tables.reconstruction_table(inp))):
        if t is None:
            why = "mimic report.json or perf.json" if name == "Table 5" else "mimic report.json"
            rep.skipped.append(f"{name}: no {why} among the inputs")
        else:
            rep.tables.append(t)
    for t in rep.tables:
        rep.files += t.write(out / "tables")

    fig_dir = out / "figures"
    attempts = [
        ("Figure 3 (accuracy vs parameters)", lambda: figures.figure3(groups, fig_dir)),
        ("Figure 4 (backbone scales)", lambda: figures.figure4(groups, fig_dir)),
        ("Figure 5 (reconstruction variants)", lambda: figures.figure5(groups, inp, fig_dir)),
        ("Figure 6 (G/n/K scaling)", lambda: figures.figure6(groups, fig_dir)),
        ("Figures 7-8 (diversity)", lambda: figures.figure7_8(inp, fig_dir)),
        ("Accuracy-matrix heatmaps", lambda: figures.heatmaps(inp.runs, fig_dir)),
    ]
    for ta in rep.analyses:
        attempts.append((f"Cost-accuracy front ({ta.slug})", lambda ta=ta: [front.front_figure(ta, fig_dir)]))
        attempts.append((f"Per-task curves ({ta.slug})", lambda ta=ta: [figures.task_curves(ta, fig_dir)]))
    for name, fn in attempts:
        try:
            rep.figures += fn()
        except figures.Skip as e:
            rep.skipped.append(f"{name}: {e}")
    rep.files += rep.figures
    _write_readme(rep, inp)
    return rep


def _write_readme(rep: Report, inp: Inputs) -> None:
    rel = [str(p.relative_to(rep.out)) for p in rep.files]
    text = resources.files("recast_bench.report").joinpath("README_template.md").read_text()
    body = Template(text).safe_substitute(
        inputs=f"Inputs: {len(inp.runs)} runs, {len(inp.mimic)} mimic reports, {len(inp.perf)} perf reports.",
        bootstrap=f"{stats.BOOTSTRAP_SAMPLES:,}",
        produced="\n".join(f"- `{p}`" for p in rel),
        skipped="\n".join(f"- {s}" for s in rep.skipped) or "- nothing",
        tables="\n".join(t.to_markdown() for t in rep.readme_tables()),
    )
    (rep.out / "README.md").write_text(body.rstrip() + "\n")
    index = {"files": rel, "skipped": rep.skipped, "tables": [t.key for t in rep.tables]}
    (rep.out / "index.json").write_text(json.dumps(index, indent=2))
    rep.files += [rep.out / "README.md", rep.out / "index.json"]
