"""``recast-bench dashboard RUNS... --project P [--entity E] [--dry-run --out FILE]``: W&B reports as code.

Builds one W&B report (``wandb-workspaces``' reports API) that compares methods, one section per paper table of the
runs (their W&B group ``<backbone>-<stream>-<table>``, as ``logger=wandb`` names it): a table of accuracy per
method with our 95 % t intervals, a bar chart of accuracy per method (W&B draws a ±1 standard-error band: its
closest range to an interval), accuracy against bytes per task, BWT and forgetting, and per-task test and validation
curves. The numbers W&B cannot compute from run summaries (t intervals, forgetting) are computed here from the local
runs and shown as Markdown blocks.

``--dry-run --out FILE`` writes the spec as JSON and touches no network; without ``--dry-run`` the report is saved
to W&B (``wandb login`` first). The spec (:func:`build_spec`) is plain data; :func:`to_wandb_report` turns it into
``wandb_workspaces`` objects, imported only here.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.report.collect import Group

SPEC_NAME = "recast-bench-dashboard"
SPEC_VERSION = 1
GROUPBY = ["config.method_name", "config.protocol.card"]
"""W&B grouping of a section's runs: the method, and the card that tells variants apart (``rosa@full``)."""


def _iv_text(iv: Any) -> str:  # noqa: ANN401 (stats.Interval | None)
    if iv is None:
        return "—"
    return f"{iv.mean:.2f} ± {iv.half:.2f}" if iv.half is not None else f"{iv.mean:.2f} ({iv.n} seed, no interval)"


def _method_record(g: Group) -> dict[str, Any]:
    from recast_bench.report import metrics, paper, stats

    per_run = [metrics.run_metrics(r) for r in g.runs]
    row = paper.main_row(paper.main_table_for(g.backbone), g.method, g.variant)
    ivs = {k: stats.t_interval([m[k] for m in per_run]) for k in ("avg_acc", "bwt", "forgetting")}
    return {
        "label": g.label,
        "method": g.method,
        "card": ((g.runs[0].get("config") or {}).get("protocol") or {}).get("card"),
        "seeds": g.seeds,
        **{k: None if iv is None else iv.as_dict() for k, iv in ivs.items()},
        "_text": {k: _iv_text(iv) for k, iv in ivs.items()},
        "bytes_per_task": g.bytes_per_task(),
        "params_per_task": g.params_per_task(),
        "paper_acc": row["acc"] if row else None,
        "paper_vs_ci": stats.vs_paper(ivs["avg_acc"], row["acc"] if row else None),
    }


def _markdown(methods: list[dict], keys: tuple[str, ...], head: str) -> str:
    cols = ["method", "seeds", *keys] + (["paper", "vs paper"] if "avg_acc" in keys else [])
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in methods:
        cells = [m["label"], " ".join(map(str, m["seeds"])), *(m["_text"][k] for k in keys)]
        if "avg_acc" in keys:
            cells += ["—" if m["paper_acc"] is None else f"{m['paper_acc']:.1f}", m["paper_vs_ci"] or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section_spec(wandb_group: str, members: list[Group]) -> dict[str, Any]:
    """One paper table: its runs' W&B group, the methods' numbers, and the panels."""
    methods = [_method_record(g) for g in members]
    tasks = list(dict.fromkeys(t for g in members for t in g.tasks))
    backbone, stream = members[0].backbone, members[0].stream
    table = wandb_group.rsplit("-", 1)[-1]
    title = f"{table} · {backbone} / {stream}"
    acc_md = _markdown(
        methods,
        ("avg_acc",),
        "Average accuracy (%), mean over seeds ± half-width of the 95 % "
        "Student-t interval (computed by recast-bench from the runs)",
    )
    fgt_md = _markdown(
        methods,
        ("bwt", "forgetting"),
        "Backward transfer and forgetting (Chaudhry), percentage points, 95 % t interval",
    )
    panels = [
        {"kind": "markdown", "text": acc_md},
        {
            "kind": "bar",
            "title": "Average accuracy per method (band: ±1 standard error over seeds)",
            "metrics": ["avg_acc"],
            "aggregate": "mean",
            "range": "stderr",
        },
        {
            "kind": "scatter",
            "title": "Average accuracy vs bytes per task (head excluded)",
            "x": "bytes_per_task",
            "y": "avg_acc",
            "log_x": True,
        },
        {
            "kind": "scatter",
            "title": "Average accuracy vs parameters per task (head excluded)",
            "x": "params_per_task",
            "y": "avg_acc",
            "log_x": True,
        },
        {
            "kind": "bar",
            "title": "Backward transfer per method (band: ±1 standard error)",
            "metrics": ["bwt"],
            "aggregate": "mean",
            "range": "stderr",
        },
        {"kind": "markdown", "text": fgt_md},
        {
            "kind": "line",
            "title": "Per-task test accuracy after each task",
            "x": "Step",
            "y": [f"task/{t}/test/acc" for t in tasks],
            "aggregate": "mean",
            "range": "stderr",
        },
        {
            "kind": "line",
            "title": "Per-task validation accuracy per epoch",
            "x": "Step",
            "y": [f"task/{t}/val/acc" for t in tasks],
            "aggregate": "mean",
            "range": "stderr",
        },
    ]
    return {
        "title": title,
        "wandb_group": wandb_group,
        "filters": f'Group = "{wandb_group}"',
        "groupby": GROUPBY,
        "backbone": backbone,
        "stream": stream,
        "paper_table": table,
        "tasks": tasks,
        "runs": sorted(r["_dir"] for g in members for r in g.runs),
        "methods": [{k: v for k, v in m.items() if not k.startswith("_")} for m in methods],
        "panels": panels,
    }


def build_spec(runs: list[dict], project: str, entity: str | None, title: str) -> dict[str, Any]:
    """The dashboard spec: one section per W&B group (paper table x backbone x stream) of the runs."""
    from recast_bench.engine.logging import wandb_grouping
    from recast_bench.report.collect import group_runs

    by_group: dict[str, list[dict]] = {}
    for r in runs:
        by_group.setdefault(wandb_grouping(r.get("config") or {})["group"], []).append(r)
    sections = [section_spec(name, group_runs(rs)) for name, rs in sorted(by_group.items())]
    logged = [r["_dir"] for r in runs if (Path(r["_dir"]) / "wandb").is_dir()]
    notes = []
    if len(logged) < len(runs):
        notes.append(
            f"{len(runs) - len(logged)} of {len(runs)} runs have no W&B run (run with logger=wandb, then "
            "`wandb sync OUT/wandb/offline-run-*`): their panels stay empty until they are on W&B; the "
            "Markdown tables hold every run"
        )
    return {
        "schema": SPEC_NAME,
        "schema_version": SPEC_VERSION,
        "kind": "report",
        "project": project,
        "entity": entity,
        "title": title,
        "sections": sections,
        "runs_on_wandb": len(logged),
        "notes": notes,
    }


def to_wandb_report(spec: dict[str, Any]) -> Any:  # noqa: ANN401 (a wandb_workspaces Report)
    """The spec as a ``wandb_workspaces.reports.v2.Report`` (no network until it is saved)."""
    import wandb_workspaces.reports.v2 as wr

    entity = spec["entity"] or ""
    blocks: list[Any] = [
        wr.P(text="Built by `recast-bench dashboard` from local runs; intervals are 95 % Student-t over seeds.")
    ]
    for sec in spec["sections"]:
        runset = wr.Runset(
            entity=entity,
            project=spec["project"],
            name=sec["wandb_group"],
            filters=sec["filters"],
            groupby=list(sec["groupby"]),
        )
        panels: list[Any] = []
        blocks.append(wr.H2(text=sec["title"]))
        for p in sec["panels"]:
            if p["kind"] == "markdown":
                blocks.append(wr.MarkdownBlock(text=p["text"]))
            elif p["kind"] == "bar":
                panels.append(
                    wr.BarPlot(
                        title=p["title"],
                        metrics=[wr.SummaryMetric(m) for m in p["metrics"]],
                        groupby_aggfunc=p["aggregate"],
                        groupby_rangefunc=p["range"],
                    )
                )
            elif p["kind"] == "scatter":
                panels.append(
                    wr.ScatterPlot(
                        title=p["title"], x=wr.SummaryMetric(p["x"]), y=wr.SummaryMetric(p["y"]), log_x=p["log_x"]
                    )
                )
            elif p["kind"] == "line":
                panels.append(
                    wr.LinePlot(
                        title=p["title"],
                        x=p["x"],
                        y=list(p["y"]),
                        groupby_aggfunc=p["aggregate"],
                        groupby_rangefunc=p["range"],
                    )
                )
        blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    return wr.Report(
        project=spec["project"],
        entity=entity,
        title=spec["title"][:128],
        description="Methods compared per paper table, with intervals",
        blocks=blocks,
    )


def _check_online() -> None:
    """One line instead of a traceback when W&B cannot be used: no network, or not logged in.

    The network comes first: with an API key, ``wandb.Api()`` verifies it against the server and waits about 20 s
    for an unreachable one before it fails.
    """
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"cannot reach W&B at {host}:{port} ({e.strerror or e}); no network? "
            "use --dry-run --out FILE to write the spec"
        ) from None
    try:
        import wandb

        wandb.Api()
    except Exception as e:  # wandb raises UsageError / AuthenticationError variants across versions
        raise UserError(
            f"W&B: {str(e).splitlines()[0]} (run `wandb login` once, or use --dry-run --out FILE)"
        ) from None


def save_online(spec: dict[str, Any]) -> str:
    """Save the report to W&B and return its URL."""
    _check_online()
    report = to_wandb_report(spec)
    try:
        report.save()
        return str(report.url)
    except Exception as e:  # network and API errors come from several layers (requests, gql, wandb)
        raise UserError(f"W&B did not save the report: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def handler(args: argparse.Namespace) -> int:
    from recast_bench.report.collect import load_inputs

    if args.dry_run and not args.out:
        raise UserError("--dry-run writes the spec to a file: give --out FILE")
    inp = load_inputs(list(args.runs), allow_incomplete=args.allow_incomplete)
    if not inp.runs:
        raise UserError("no complete results.json among the given paths: a dashboard compares runs")
    spec = build_spec(inp.runs, args.project, args.entity, args.title)
    for n in spec["notes"]:
        print(f"dashboard: {n}", file=sys.stderr)
    if args.dry_run:
        wr_report = to_wandb_report(spec)  # builds and validates the W&B objects; no network before save()
        spec["wandb_workspaces_blocks"] = [type(b).__name__ for b in wr_report.blocks]
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(spec, indent=1) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {out} ({e.strerror})") from None
        print(f"dashboard spec: {len(spec['sections'])} sections -> {out} (dry run, nothing sent)", file=sys.stderr)
        return 0
    url = save_online(spec)
    print(f"W&B report saved: {url}")
    return 0


def add_parser(subparsers) -> None:  # noqa: ANN001 (argparse's private subparsers type)
    """Register ``dashboard`` on the main CLI."""
    p = subparsers.add_parser(
        "dashboard",
        help="a W&B report comparing the runs' methods per paper table (wandb-workspaces); --dry-run writes the spec",
        description="Build a W&B report that compares methods per paper table: accuracy per method with 95% t "
        "intervals, accuracy against bytes per task, BWT and forgetting, per-task curves. Online use needs "
        "`wandb login`; --dry-run --out FILE writes the spec as JSON without any network.",
    )
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run directories, their parents, or globs")
    p.add_argument("--project", required=True, help="the W&B project holding the runs")
    p.add_argument("--entity", default=None, help="W&B team or user (default: your default entity)")
    p.add_argument("--title", default="recast-bench: methods per paper table", help="the report's title")
    p.add_argument("--dry-run", action="store_true", help="write the spec to --out; no network")
    p.add_argument("--out", default=None, help="with --dry-run: the spec file (JSON)")
    p.add_argument("--allow-incomplete", action="store_true", help="also use runs that stopped before the last task")
    p.set_defaults(func=handler)
