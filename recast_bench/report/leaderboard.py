"""``recast-bench leaderboard RUNS... --out FILE``: one versioned JSON (plus .md and .csv beside it).

One row per method x backbone x stream (runs that differ only by seed), with accuracy and its 95 % t interval, the
seeds, per-task parameters and bytes, wall time and GPU-hours, the protocol card and the values that departed from
it, git commit, package versions, device and GPU name. Reference rows follow: the paper's Tables 1, 2 and 4
(shipped in ``paper_numbers/``), outside numbers (``reference_rows.json``), and any ``--reference FILE`` of the
user's, each labelled with how its protocol differs from ours. The schema is :mod:`.leaderboard_schema`; earlier
leaderboard files given among RUNS are read (validated) and their rows kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recast_bench.errors import UserError
from recast_bench.report import leaderboard_schema as schema
from recast_bench.report.leaderboard_files import write

if TYPE_CHECKING:
    from recast_bench.report.collect import Group

PAPER_PROTOCOL = (
    "the paper's reported number (mean of 3 seeds; std given for its RECAST rows only): the authors' code keeps "
    "the epoch with the best test accuracy (ours: best validation), and the paper states a '75%-15%-15%' split "
    "(ours: the official splits by default)"
)


def _one_or_many(values: list[Any]) -> Any:  # noqa: ANN401
    """The value shared by every seed, else the sorted distinct values (``None`` when none recorded one)."""
    known = sorted({json.dumps(v, sort_keys=True) for v in values if v is not None})
    if not known:
        return None
    parsed = [json.loads(k) for k in known]
    return parsed[0] if len(parsed) == 1 else parsed


def _lookup(config: dict, key: str) -> Any:  # noqa: ANN401
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def protocol_record(g: Group) -> dict:
    """The rows' card, and for every key they changed: the value run, the card's value and its source."""
    from recast_bench.protocol.cards import by_id, family_of

    proto = (g.runs[0].get("config") or {}).get("protocol") or {}
    card_id = proto.get("card")
    card = by_id(card_id, family_of(g.backbone)) if card_id else None
    overridden = {}
    for key in sorted(
        {k for r in g.runs for k in ((r.get("config") or {}).get("protocol") or {}).get("overridden", [])}
    ):
        ran = _one_or_many([_lookup(r.get("config") or {}, key) for r in g.runs])
        v = card.values.get(key) if card else None
        overridden[key] = {"ran": ran, "card": v.value if v else None, "source": v.source if v else None}
    return {
        "card": card_id,
        "table": proto.get("table"),
        "overridden": overridden,
        "unapplied": sorted(
            {k for r in g.runs for k in ((r.get("config") or {}).get("protocol") or {}).get("unapplied", [])}
        ),
    }


def _iv(iv: Any) -> dict | None:  # noqa: ANN401
    return None if iv is None else iv.as_dict()


def _compute_record(g: Group) -> dict:
    """GPU-hours (runs on CUDA) or CPU wall hours, GPUs per run, and the mean training throughput when timed."""
    from recast_bench.report import front

    hours = [front.compute_hours(r) for r in g.runs]
    gpu_h = [h for h, k in hours if k == "gpu" and h is not None]
    cpu_h = [h for h, k in hours if k == "cpu" and h is not None]
    img_s = [t["img_s"] for r in g.runs for t in (r.get("timing") or []) if t and t.get("img_s")]
    return {
        "gpu_hours": sum(gpu_h) / len(gpu_h) if gpu_h else None,
        "cpu_wall_hours": sum(cpu_h) / len(cpu_h) if cpu_h else None,
        "gpus_per_run": _one_or_many([front.gpu_count(r) for r, (_, k) in zip(g.runs, hours) if k == "gpu"]),
        "img_s": sum(img_s) / len(img_s) if img_s else None,
    }


def _task_agnostic_record(g: Group) -> dict | None:
    from recast_bench.report.stats import t_interval

    agn = [r["task_agnostic"] for r in g.runs if r.get("task_agnostic")]
    if not agn:
        return None
    return {
        "rule": _one_or_many([a.get("rule") for a in agn]),
        "n": len(agn),
        "acc": _iv(t_interval([a.get("acc") for a in agn])),
        "task_id_acc": _iv(t_interval([a.get("task_id_acc") for a in agn])),
    }


def _paper_record(g: Group) -> dict | None:
    from recast_bench.report import paper, stats

    table = paper.main_table_for(g.backbone)
    row = paper.main_row(table, g.method, g.variant)
    if row is None:
        return None
    return {
        "table": table,
        "label": row["label"],
        "acc": row["acc"],
        "std": row["std"],
        "vs_ci": stats.vs_paper(g.interval(), row["acc"]),
        "same_backbone": g.backbone == paper.load(table)["backbone"],
    }


def _environment(g: Group) -> dict:
    """Commit, compile setting, package versions, device, GPU and precision (one value, or the distinct ones)."""
    from recast_bench.report.schema import has

    versions = {
        k: _one_or_many([(r.get("versions") or {}).get(k) for r in g.runs])
        for k in (*schema.VERSION_KEYS, "torchvision", "recast_bench")
    }
    compiled = _one_or_many([r.get("compile") for r in g.runs]) if any(has(r, "compile") for r in g.runs) else None
    return {
        "git_commit": _one_or_many([r.get("git_commit") for r in g.runs]),
        "compile": compiled,
        "versions": versions,
        **{k: _one_or_many([r.get(k) for r in g.runs]) for k in ("device", "gpu_name", "precision")},
    }


MISSING_KEYS = ("git_commit", "timing", "task_switch_ms", "versions.avalanche", "task_agnostic")


def our_row(g: Group) -> dict:
    """The leaderboard row of one group (see :data:`leaderboard_schema.OUR_FIELDS`)."""
    from recast_bench.report import front, metrics, stats
    from recast_bench.report.schema import missing_note, schema_version

    acc = g.interval()
    if acc is None:
        raise ValueError(f"{g.label}: no run records an average accuracy")
    per_run = [metrics.run_metrics(r) for r in g.runs]
    params, bb = g.params_per_task(), g.backbone_params()
    return {
        "kind": "ours",
        **{k: getattr(g, k) for k in ("label", "method", "variant", "backbone", "stream", "tasks", "seeds")},
        "acc": acc.as_dict(),
        "task_acc": {t: _iv(g.task_interval(j)) for j, t in enumerate(g.tasks)},
        "metrics": {k: _iv(stats.t_interval([m[k] for m in per_run])) for k in ("avg_inc_acc", "bwt", "forgetting")},
        "task_agnostic": _task_agnostic_record(g),
        "params_per_task": params,
        "head_params_per_task": g.head_params_per_task(),
        "bytes_per_task": g.bytes_per_task(),
        "backbone_params": bb,
        "params_fraction": None if params is None or not bb else params / bb,
        "wall_s": {"mean": g.wall_s(), "total": sum(float(r["wall_s"]) for r in g.runs)},
        "compute": _compute_record(g),
        "task_switch_ms": front.group_costs(g)["task_switch_ms"],
        "protocol": protocol_record(g),
        **_environment(g),
        "paper": _paper_record(g),
        "runs": [r["_dir"] for r in g.runs],
        "results_schema": sorted({schema_version(r) for r in g.runs}),
        "missing": [n for k in MISSING_KEYS if (n := missing_note(g.runs, k, effect=False))],
    }


def paper_reference_rows() -> list[dict]:
    """The paper's Tables 1 and 2 (six-task averages) and Table 4 (per dataset) as reference rows."""
    from recast_bench.protocol import load as load_cards
    from recast_bench.report import paper

    rows = []
    for table in ("table1_resnet34", "table2_vit_small"):
        t = paper.load(table)
        total = load_cards(table.split("_")[0])[0].get("total_params")
        for r in t["rows"]:
            frac = r.get("fraction")
            rows.append(
                {
                    "kind": "reference",
                    "label": f"{r['label']} (paper)",
                    "method": r["method"],
                    "variant": r.get("variant"),
                    "backbone": t["backbone"],
                    "stream": "six",
                    "acc": r["acc"],
                    "std": r.get("std"),
                    "fraction": frac,
                    "params_per_task": None if frac is None or not total else frac * total,
                    "source": t["source"],
                    "protocol_difference": PAPER_PROTOCOL + (f"; note: {r['note']}" if r.get("note") else ""),
                    "verified": "shipped with recast-bench (recast_bench/report/paper_numbers)",
                }
            )
    t4 = paper.load("table4_per_dataset")
    for r in t4["rows"]:
        rows.append(
            {
                "kind": "reference",
                "label": f"{r['label']} (paper Table 4)",
                "method": r["method"],
                "variant": r.get("variant"),
                "backbone": r["backbone"],
                "stream": "six",
                "task_acc": dict(zip(t4["tasks"], r["acc"])),
                "source": t4["source"],
                "protocol_difference": PAPER_PROTOCOL + (f"; note: {r['note']}" if r.get("note") else ""),
                "verified": "shipped with recast-bench (recast_bench/report/paper_numbers)",
            }
        )
    return rows


def outside_reference_rows() -> list[dict]:
    """Numbers from other benchmarks (``reference_rows.json``), each labelled with its protocol difference."""
    data = json.loads(resources.files("recast_bench.report").joinpath("reference_rows.json").read_text())
    return [{"kind": "reference", **r} for r in data["reference_rows"]]


def _key(row: dict) -> tuple:
    return (row["method"], row.get("variant"), row["backbone"], row["stream"], row["label"])


def build(groups: list[Group], reference_rows: list[dict], carried: list[dict], notes: list[str]) -> dict:
    """The leaderboard dict: rows carried from earlier leaderboards (replaced by ours on the same label, backbone
    and stream), our rows, then the reference rows; validated before it is returned."""
    from recast_bench.report import stats

    ours = []
    for g in groups:
        if g.interval() is None:
            notes.append(f"{g.label} on {g.backbone}/{g.stream}: no row, none of its runs records an average accuracy")
            continue
        ours.append(our_row(g))
    mine = {_key(r) for r in ours}
    rows = [r for r in carried if _key(r) not in mine] + ours
    rows.sort(key=lambda r: (r["backbone"], r["stream"], -r["acc"]["mean"]))
    data = {
        "schema": schema.NAME,
        "schema_version": schema.VERSION,
        "created_by": f"recast-bench {_version()}",
        "interval": f"mean over seeds with a two-sided {stats.CONFIDENCE:.0%} Student-t interval (n - 1 degrees of "
        "freedom); ci95 is null for one seed",
        "compute": "gpu_hours: mean over seeds of wall hours x GPUs for runs on CUDA; cpu_wall_hours: wall hours "
        "of runs on a CPU (not GPU-hours); both include Neural Mimicry and evaluation",
        "rows": rows,
        "reference_rows": reference_rows,
        "notes": notes,
    }
    schema.validate(data)  # what we write, we can read back
    return data


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recast-bench")
    except PackageNotFoundError:
        return "unknown"


def split_inputs(paths: list[str]) -> tuple[list[str], list[Path]]:
    """RUNS arguments: run directories (and globs) on one side, earlier leaderboard files on the other."""
    runs, boards = [], []
    for p in paths:
        f = Path(p)
        if f.is_file() and f.suffix == ".json" and f.name not in ("results.json", "report.json", "perf.json"):
            boards.append(f)
        else:
            runs.append(p)
    return runs, boards


def handler(args: argparse.Namespace) -> int:
    from recast_bench.report.collect import group_runs, load_inputs

    runs, boards = split_inputs(list(args.runs))
    refs = [] if args.no_paper else paper_reference_rows() + outside_reference_rows()
    for f in args.reference or []:  # read (and refuse) the small files before loading any run
        refs += schema.read_reference_rows(f)
    carried = [row for b in boards for row in schema.read(b)["rows"]]
    notes: list[str] = []
    groups = []
    if runs:
        inp = load_inputs(runs, allow_incomplete=args.allow_incomplete)
        notes += inp.skipped
        groups = group_runs(inp.runs)
        if not groups:
            raise UserError("no complete results.json among the given runs (mimic and perf reports have no rows)")
    data = build(groups, refs, carried, notes)
    paths = write(data, args.out)
    print(
        f"leaderboard: {len(data['rows'])} rows, {len(data['reference_rows'])} reference rows -> "
        f"{', '.join(str(p) for p in paths)}",
        file=sys.stderr,
    )
    return 0


def add_parser(subparsers) -> None:  # noqa: ANN001 (argparse's private subparsers type)
    """Register ``leaderboard`` on the main CLI."""
    p = subparsers.add_parser(
        "leaderboard",
        help="one versioned leaderboard file (JSON, plus .md and .csv) from runs, with reference rows",
        description="One row per method x backbone x stream, aggregated over seeds (accuracy with a 95% t "
        "interval, seeds, per-task parameters and bytes, wall time and GPU-hours, protocol card and departures, "
        "git commit, package versions, device), then the paper's rows and outside reference rows.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUNS",
        help="run directories, their parents or globs; earlier leaderboard .json files are merged",
    )
    p.add_argument("--out", required=True, help="the leaderboard file (.json); .md and .csv are written beside it")
    p.add_argument(
        "--reference",
        action="append",
        metavar="FILE",
        help='your own reference rows (JSON: a list of rows, or {"reference_rows": [...]}); '
        "each needs label, source, protocol_difference and acc or task_acc; repeatable",
    )
    p.add_argument("--no-paper", action="store_true", help="leave out the shipped paper and outside reference rows")
    p.add_argument("--allow-incomplete", action="store_true", help="also use runs that stopped before the last task")
    p.set_defaults(func=handler)
