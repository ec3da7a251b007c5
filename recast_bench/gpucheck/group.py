"""Runs check cases one after another in one process: ``python -m recast_bench.gpucheck.group SPEC.json``.

SPEC holds ``{"status_dir": D, "cases": [{"name", "argv"}, ...]}`` (``argv``: a ``recast-bench`` command line). For
case ``i`` the process writes ``D/i.start`` when it begins, sends its stdout and stderr (file descriptors, so loader
workers' output too) to ``D/i.log``, and writes ``D/i.json`` (``{"rc", "devices", "t0", "t1"}``: exit code, the
device of every test evaluation, start and end time) when it ends. The parent (``schedule.py``) reads these files to
enforce each case's time limit and to tell a crash from a pass; a DDP rank other than 0 re-runs this command and
writes ``*.rank<r>`` files instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _suffix() -> str:
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return "" if rank in ("", "0") else f".rank{rank}"


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (the file descriptors) to ``path`` inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def run_one(argv: list[str]) -> tuple[int, list[str]]:
    """``recast-bench ARGV`` in this process: (exit code, the device of each test evaluation). Never raises."""
    from recast_bench.cli import main as cli_main
    from recast_bench.gpucheck.evalprobe import probe

    devices: list[str] = []
    try:
        with probe() as devices:
            rc = cli_main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except Exception:  # noqa: BLE001 (the check reports every failure as a case result)
        traceback.print_exc()
        rc = 1
    finally:
        _between_cases()
    return rc, devices


def _between_cases() -> None:
    """The next case starts clean: torch.compile's caches (a function recompiled past its limit would silently run
    eager) and, on a GPU, the previous case's memory (its peak must not include what is left over; a full collection
    takes about a second here, so only where it matters)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    status = Path(spec["status_dir"])
    sfx = _suffix()
    for i, case in enumerate(spec["cases"]):
        t0 = time.time()
        _write_json(status / f"{i}.start{sfx}", t0)
        rc, devices = run_logged(case["name"], case["argv"], status / f"{i}.log{sfx}")
        _write_json(status / f"{i}.json{sfx}", {"rc": rc, "devices": devices, "t0": t0, "t1": time.time()})
    return 0


def run_logged(name: str, argv: list[str], log: Path) -> tuple[int, list[str]]:
    """:func:`run_one` with this process's output sent to ``log``."""
    with _output_to(log):
        print(f"gpu-check case {name}: recast-bench {' '.join(argv)}", flush=True)
        return run_one(argv)


if __name__ == "__main__":
    sys.exit(main())
