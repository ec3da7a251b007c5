"""Push a report's comparison tables (``wandb.Table``) and figures (``wandb.Image``) to one W&B "report" run.

Offline by default (``WANDB_MODE=offline``): the run lands in ``<out>/wandb/offline-run-*``; upload it later with
``wandb sync <out>/wandb/offline-run-*``.
"""

from __future__ import annotations

import os
from pathlib import Path

from recast_bench.report.build import Report


def report_group(runs: list[dict] | None) -> tuple[str | None, list[str]]:
    """The W&B group of the report run: the runs' own group (backbone-stream-protocol) when they share one.

    Runs of several groups in one report get no group; their groups become tags so the report is still findable.
    """
    from recast_bench.engine.logging import wandb_grouping

    groups = sorted({wandb_grouping(r.get("config") or {})["group"] for r in runs or []})
    if len(groups) == 1:
        return groups[0], []
    return None, groups


def push(
    rep: Report,
    project: str = "recast-bench",
    entity: str | None = None,
    name: str = "report",
    runs: list[dict] | None = None,
) -> Path:
    """Log every table and figure of ``rep``; returns the local W&B run directory.

    ``runs`` (the reported ``results.json`` dicts) put the report run in the same W&B group as the runs themselves.
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    group, tags = report_group(runs)
    run = wandb.init(
        project=project,
        entity=entity,
        name=name if group is None else f"{name}-{group}",
        group=group,
        tags=["report", *tags],
        job_type="report",
        dir=str(rep.out),
        mode=os.environ["WANDB_MODE"],
        reinit="finish_previous",
    )
    try:
        payload: dict = {}
        for t in rep.tables:
            # W&B tables want one type per column: keep numbers as numbers, everything else as text.
            rows = [[v if v is None or isinstance(v, int | float) else str(v) for v in r] for r in t.rows]
            payload[f"tables/{t.key}"] = wandb.Table(columns=t.columns, data=rows)
        for p in rep.figures:
            key = str(p.relative_to(rep.out / "figures").with_suffix("")).replace(os.sep, "/")
            payload[f"figures/{key}"] = wandb.Image(str(p))
        run.log(payload)
        run.summary["report_dir"] = str(rep.out)
        run_dir = Path(run.dir).parent  # <out>/wandb/offline-run-*/files -> the run folder wandb sync takes
    finally:
        run.finish()
    return run_dir
