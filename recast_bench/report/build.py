"""``make_report``: runs and reports in, paper-format tables (Markdown, CSV), figures (PNG) and a README out.

Every table and figure is attempted; one whose inputs are missing is skipped and the README says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from recast_bench.errors import UserError
from recast_bench.report import figures, tables
from recast_bench.report.collect import Inputs, group_runs


@dataclass
class Report:
    out: Path
    tables: list[tables.Table] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def main_tables(self) -> list[tables.Table]:
        return [t for t in self.tables if t.key.startswith(("table1_", "table2_"))]

    def protocol_tables(self) -> list[tables.Table]:
        return [t for t in self.tables if t.key.startswith("protocol_")]


def _prepare(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report directory {out} ({e.strerror})") from None


def make_report(inp: Inputs, out: str | Path) -> Report:
    """Write every table and figure the inputs allow under ``out``, plus ``README.md`` and ``index.json``."""
    out = Path(out)
    _prepare(out)
    rep = Report(out=out, skipped=list(inp.skipped))
    groups = group_runs(inp.runs)

    if groups:
        rep.tables += tables.main_tables(groups) + tables.protocol_tables(groups) + tables.per_dataset_tables(groups)
        rep.tables.append(tables.run_index_table(inp.runs))
    else:
        rep.skipped.append("Tables 1, 2 and 4: no complete results.json among the inputs")
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
    lines = [
        "# recast-bench report",
        "",
        f"Inputs: {len(inp.runs)} runs, {len(inp.mimic)} mimic reports, {len(inp.perf)} perf reports.",
        "The paper's numbers come from `recast_bench/report/paper_numbers/*.json`;",
        "every diff is ours minus the paper's.",
        "",
        "## Produced",
        "",
        *[f"- `{p}`" for p in rel],
        "",
        "## Skipped",
        "",
        *([f"- {s}" for s in rep.skipped] or ["- nothing"]),
        "",
    ]
    for t in rep.main_tables():
        lines += [t.to_markdown(), ""]
    for t in rep.protocol_tables():
        lines += [t.to_markdown(), ""]
    (rep.out / "README.md").write_text("\n".join(lines))
    index = {"files": rel, "skipped": rep.skipped, "tables": [t.key for t in rep.tables]}
    (rep.out / "index.json").write_text(json.dumps(index, indent=2))
    rep.files += [rep.out / "README.md", rep.out / "index.json"]
