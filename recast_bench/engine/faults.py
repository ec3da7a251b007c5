"""Failpoints for the fault-tolerance tests: ``RECAST_BENCH_KILL_AT=<point>[:<n>]`` SIGKILLs the process the
n-th time (default 1st) execution reaches ``<point>``. Unset (always, outside tests) it costs one dict lookup.

Points: ``task_done`` (after a task's results are written), ``mid_task`` (inside a training step),
``checkpoint_write`` (a tensor file written to its temporary name but not yet renamed into place).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def failpoint(point: str) -> None:
    spec = os.environ.get("RECAST_BENCH_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
