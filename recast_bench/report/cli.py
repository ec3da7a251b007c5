"""The ``recast-bench report`` subcommand: paper-format tables and figures from runs, mimic and perf reports.

``recast-bench report RUNS... --out DIR`` takes run directories (``results.json``), ``recast-bench mimic``
directories (``report.json``), ``perf`` directories (``perf.json``), parents of any of these, or globs.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:  # noqa: ANN001 (argparse's private subparsers type)
    """Register ``report`` on the main CLI; its ``func`` is :func:`handler`."""
    p = subparsers.add_parser(
        "report",
        help="paper-format tables (Markdown, CSV) and figures (PNG) from runs",
        description="Paper-format tables (Markdown, CSV) and figures (PNG) from runs, mimic and perf reports.",
    )
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run / mimic / perf directories, their parents, or globs")
    p.add_argument("--out", required=True, help="report directory (tables/, figures/, README.md)")
    p.add_argument("--allow-incomplete", action="store_true", help="also use runs that stopped before the last task")
    p.add_argument("--wandb", action="store_true", help="also log the tables and figures to a W&B 'report' run")
    p.add_argument("--wandb-project", default="recast-bench", help="W&B project (default: recast-bench)")
    p.add_argument("--wandb-entity", default=None, help="W&B team or user (default: your default entity)")
    p.add_argument("--quiet", action="store_true", help="do not print the main tables")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Build the report; print the main tables and where everything went. User mistakes raise UserError."""
    from recast_bench.report.build import make_report
    from recast_bench.report.collect import load_inputs

    inp = load_inputs(list(args.runs), allow_incomplete=args.allow_incomplete)
    rep = make_report(inp, args.out)
    if not args.quiet:
        for t in rep.main_tables():
            print(terminal_table(t))
    if args.wandb:
        from recast_bench.report.wandb_push import push

        run_dir = push(rep, project=args.wandb_project, entity=args.wandb_entity, runs=inp.runs)
        print(f"W&B report run: {run_dir} (offline runs upload with: wandb sync {run_dir})", file=sys.stderr)
    print(
        f"report: {len(rep.tables)} tables, {len(rep.figures)} figures in {rep.out} "
        f"({len(rep.skipped)} skipped, see {rep.out / 'README.md'})",
        file=sys.stderr,
    )
    return 0


def terminal_table(t) -> str:  # noqa: ANN001 (tables.Table)
    """A compact fixed-width view of Table 1/2: ours (mean ± 95 % t half-width) beside the paper's."""
    from recast_bench.report.table import ci_cell, fmt

    cols = ["method", "seeds", "params_per_task", "acc", "vs_linear_seeds", "vs_linear_images", "paper_acc",
            "paper_vs_ci"]  # fmt: skip
    acc = ci_cell("acc", n="seeds")
    cells = [cols] + [[acc(rec) if c == "acc" else fmt(rec.get(c)) for c in cols] for rec in t.records()]
    widths = [max(len(row[k]) for row in cells) for k in range(len(cols))]
    lines = [t.title, "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(cells[0], widths)))]
    lines.append("-" * len(lines[-1]))
    for row in cells[1:]:
        lines.append("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines) + "\n"
