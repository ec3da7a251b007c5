"""Progress of ``make bench``: which of the expected runs are complete, and how far each one got.

Reads only the ``results.json`` files (no torch import, so it costs a fraction of a second)::

    python -m recast_bench.report.progress bench/vit_small-six --expect "linear-s42 recast-s42" --next recast-s42

prints ``[bench vit_small-six] 1/2 runs complete, 5/12 tasks; next: recast-s42 (3/6 tasks done, resuming)``.
With ``--grid`` it prints one line per expected run with its tasks done, as a final overview.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_state(run_dir: Path) -> tuple[int, int | None, str]:
    """``(completed tasks, total tasks or None, status)`` of one run directory (``missing`` without results)."""
    f = run_dir / "results.json"
    try:
        res = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return 0, None, "missing"
    return int(res.get("completed_tasks", 0)), len(res.get("tasks", [])), str(res.get("status", "running"))


def summary(root: Path, expect: list[str]) -> tuple[str, dict[str, tuple[int, int | None, str]]]:
    states = {name: run_state(root / name) for name in expect}
    complete = sum(s[2] == "complete" for s in states.values())
    totals = [s[1] for s in states.values() if s[1]]
    per_run = max(totals) if totals else None  # runs not started yet count as the stream's task count
    done = sum(s[0] for s in states.values())
    tasks = f", {done}/{per_run * len(expect)} tasks" if per_run else ""
    return f"[bench {root.name}] {complete}/{len(expect)} runs complete{tasks}", states


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="bench directory, e.g. bench/vit_small-six")
    p.add_argument("--expect", required=True, help="space-separated run directory names, e.g. 'linear-s42'")
    p.add_argument("--next", default=None, help="the run about to start")
    p.add_argument("--grid", action="store_true", help="one line per expected run")
    args = p.parse_args(argv)
    root = Path(args.root)
    expect = args.expect.split()
    line, states = summary(root, expect)
    if args.next:
        k = expect.index(args.next) + 1 if args.next in expect else "?"
        done, total, status = run_state(root / args.next)
        state = f"{done}/{total} tasks done, resuming" if status == "running" and done else "starting"
        line += f"; run {k}/{len(expect)}: {args.next} ({state})"
    print(line, flush=True)
    if args.grid:
        width = max(len(n) for n in expect)
        for name, (done, total, status) in states.items():
            bar = "#" * done + "." * ((total or 0) - done)
            print(f"  {name:<{width}}  {bar:<8} {done}/{total if total else '?'} {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
