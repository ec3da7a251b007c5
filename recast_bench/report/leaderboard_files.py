"""Writing a leaderboard: the JSON itself, a Markdown view (our rows, then the reference rows) and a flat CSV.

Each file is written under a temporary name and renamed, so a failed write leaves the previous leaderboard whole.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from recast_bench.errors import UserError
from recast_bench.report import leaderboard_schema as schema


def _acc_text(iv: dict | None) -> str:
    if not iv or iv.get("mean") is None:
        return "—"
    if iv.get("ci95") is None:
        return f"{iv['mean']:.2f} ({iv['n']} seed)" if iv["n"] == 1 else f"{iv['mean']:.2f} (no interval)"
    return f"{iv['mean']:.2f} ± {iv['ci95'][1] - iv['mean']:.2f}"


def _text(v: Any) -> str:  # noqa: ANN401
    if v is None:
        return "—"
    if isinstance(v, list):
        return ", ".join(_text(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


OURS_CSV = [
    "label",
    "method",
    "variant",
    "backbone",
    "stream",
    "seeds",
    "acc",
    "acc_lo",
    "acc_hi",
    "params_per_task",
    "bytes_per_task",
    "head_params_per_task",
    "wall_s",
    "gpu_hours",
    "cpu_wall_hours",
    "task_switch_ms",
    "card",
    "overridden",
    "git_commit",
    "torch",
    "timm",
    "lightning",
    "avalanche",
    "device",
    "gpu_name",
    "paper_acc",
    "paper_vs_ci",
]


def _csv_row(r: dict) -> list[Any]:
    ci = r["acc"].get("ci95") or [None, None]
    paper = r.get("paper") or {}
    flat = {
        **{
            k: r.get(k)
            for k in (
                "label",
                "method",
                "variant",
                "backbone",
                "stream",
                "params_per_task",
                "bytes_per_task",
                "head_params_per_task",
                "task_switch_ms",
                "git_commit",
                "device",
                "gpu_name",
            )
        },
        "seeds": " ".join(str(s) for s in r["seeds"]),
        "acc": r["acc"]["mean"],
        "acc_lo": ci[0],
        "acc_hi": ci[1],
        "wall_s": r["wall_s"]["mean"],
        "gpu_hours": r["compute"]["gpu_hours"],
        "cpu_wall_hours": r["compute"]["cpu_wall_hours"],
        "card": r["protocol"]["card"],
        "overridden": " ".join(f"{k}={v['ran']}" for k, v in r["protocol"]["overridden"].items()),
        **{k: r["versions"].get(k) for k in schema.VERSION_KEYS},
        "paper_acc": paper.get("acc"),
        "paper_vs_ci": paper.get("vs_ci"),
    }
    return [
        "" if flat[c] is None else (" ".join(map(str, flat[c])) if isinstance(flat[c], list) else flat[c])
        for c in OURS_CSV
    ]


def to_markdown(data: dict) -> str:
    lines = [
        f"# recast-bench leaderboard (schema {data['schema_version']}, {data['created_by']})",
        "",
        f"Accuracy: {data['interval']}. Compute: {data['compute']}.",
        "",
        "## Our rows",
        "",
        "| label | backbone | stream | seeds | acc | params/task | bytes/task | GPU-h | CPU wall h | card "
        "(changed) | commit | torch | device | paper | vs paper |",
        "|" + "---|" * 15,
    ]
    for r in data["rows"]:
        p = r.get("paper") or {}
        changed = len(r["protocol"]["overridden"])
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    r["backbone"],
                    r["stream"],
                    _text(r["seeds"]),
                    _acc_text(r["acc"]),
                    _text(r["params_per_task"]),
                    _text(r["bytes_per_task"]),
                    _text(r["compute"]["gpu_hours"]),
                    _text(r["compute"]["cpu_wall_hours"]),
                    f"{r['protocol']['card'] or '—'} ({changed})",
                    _text(r["git_commit"])[:12],
                    _text(r["versions"]["torch"]),
                    _text(r["device"]) + (f" ({_text(r['gpu_name'])})" if r.get("gpu_name") else ""),
                    _text(p.get("acc")),
                    _text(p.get("vs_ci")),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Reference rows",
        "",
        "| label | backbone | stream | acc | per task | source | protocol difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["reference_rows"]:
        per_task = ", ".join(f"{t} {v}" for t, v in (r.get("task_acc") or {}).items())
        acc = _text(r.get("acc")) + (f" ± {r['std']} (sd)" if r.get("std") is not None else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    _text(r.get("backbone")),
                    _text(r.get("stream")),
                    acc,
                    per_task or "—",
                    r["source"],
                    r["protocol_difference"],
                ]
            )
            + " |"
        )
    lines += ["", *[f"- {n}" for n in data["notes"]]]
    return "\n".join(lines).rstrip() + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(data: dict, out: str | Path) -> list[Path]:
    """``out`` (.json) and the .md and .csv beside it; returns the three paths."""
    out = Path(out)
    json_path = out if out.suffix == ".json" else out.with_name(out.name + ".json")
    md_path, csv_path = json_path.with_suffix(".md"), json_path.with_suffix(".csv")
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(json_path, json.dumps(data, indent=1, allow_nan=False, default=str) + "\n")
        _atomic_write(md_path, to_markdown(data))
        tmp = csv_path.with_name(f".{csv_path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(OURS_CSV)
            w.writerows(_csv_row(r) for r in data["rows"])
        os.replace(tmp, csv_path)
    except OSError as e:
        raise UserError(f"cannot write the leaderboard to {json_path.parent} ({e.strerror})") from None
    return [json_path, md_path, csv_path]
