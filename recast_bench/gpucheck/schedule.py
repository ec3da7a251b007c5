"""Runs the check's jobs under its time budget: per-case limits, a deadline for the whole check, ``lanes`` jobs at once.

A job (``cases.Job``) is one process running its cases in order (``group.py``), or, when ``together``, one process
per case, all started at once. Jobs that share the GPU run up to ``lanes`` at a time; a job marked ``alone`` waits
until nothing else runs and holds the GPU by itself. The scheduler reads each process's status files:

* a case past its limit is stopped (the whole process group, loader workers and DDP ranks included) and reported as
  a ``timeout``; the cases after it in that process run again in a new process;
* a process that dies inside a case (a CUDA fault, a bus error) fails that case with the tail of its output, and
  the cases after it run again in a new process;
* a job whose modelled time would pass the deadline is not started, and at the deadline running cases are stopped:
  every case that did not finish this way is reported as ``skipped``, with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recast_bench.gpucheck.cases import Case, Job

STARTUP_LIMIT_S = 180.0
"""A process that has not begun its first case after this long (a hung import or CUDA initialisation) is stopped."""
EXIT_GRACE_S = 20.0
"""How long a process that finished its cases may take to exit before it is stopped."""
POLL_S = 0.2
LOG_TAIL = 6000


@dataclass
class Outcome:
    rc: int | None = None
    devices: list[str] = field(default_factory=list)
    log: str = ""
    wall_s: float | None = None
    """The case's own seconds (process start excluded)."""
    process_s: float | None = None
    """From the process's launch to the case's end (the first case of a process includes Python's start-up)."""
    skipped: str | None = None
    limit_s: float | None = None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _read(path: Path) -> object | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class _Proc:
    job: Job
    cases: list[Case]
    popen: subprocess.Popen
    status: Path
    launched: float
    done: int = 0
    finished: float | None = None


class Scheduler:
    def __init__(
        self,
        work: Path,
        argv_of: Callable[[Case], list[str]],
        limit_of: Callable[[Case], float],
        expected_of: Callable[[Job], float | None],
        deadline: float,
        lanes: int = 1,
        command: Callable[[Path], list[str]] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``deadline``: a ``time.time()``; ``command``: the argv that runs a spec file (default: ``group.py``)."""
        self.work, self.argv_of, self.limit_of, self.expected_of = work, argv_of, limit_of, expected_of
        self.deadline, self.lanes, self.cwd = deadline, max(1, lanes), cwd
        self.command = command or (lambda spec: [sys.executable, "-m", "recast_bench.gpucheck.group", str(spec)])
        self.outcomes: dict[str, Outcome] = {}
        self._n = 0

    # ---- launching --------------------------------------------------------------------------------------------------
    def _env(self, job: Job) -> dict[str, str]:
        from recast_bench.slot import RUNS_PER_NODE_ENV

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        share = len(job.cases) if job.together else (1 if job.alone else self.lanes)
        if share > 1:  # loader workers: the CPUs are divided between the runs sharing the machine
            env[RUNS_PER_NODE_ENV] = str(share)
        else:
            env.pop(RUNS_PER_NODE_ENV, None)
        return env

    def _launch(self, job: Job, cases: list[Case]) -> _Proc:
        self._n += 1
        status = self.work / "status" / f"p{self._n:03d}"
        status.mkdir(parents=True, exist_ok=True)
        spec = status / "spec.json"
        spec.write_text(
            json.dumps({"status_dir": str(status), "cases": [{"name": c.name, "argv": self.argv_of(c)} for c in cases]})
        )
        with open(status / "process.log", "wb") as log:  # its own session: stopping it stops its workers and ranks too
            popen = subprocess.Popen(
                self.command(spec), cwd=self.cwd, env=self._env(job), start_new_session=True, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return _Proc(job, cases, popen, status, time.time())

    def _start(self, job: Job) -> list[_Proc]:
        if job.together:
            return [self._launch(job, [c]) for c in job.cases]
        return [self._launch(job, job.cases)]

    # ---- bookkeeping ------------------------------------------------------------------------------------------------
    def _skip(self, cases: list[Case], reason: str) -> None:
        for c in cases:
            self.outcomes[c.name] = Outcome(skipped=reason)

    @staticmethod
    def _stop(proc: _Proc) -> None:
        if proc.popen.poll() is None:
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.popen.kill()
        proc.popen.wait()

    def _collect(self, proc: _Proc) -> None:
        """Record every case of ``proc`` that has finished since the last look."""
        while proc.done < len(proc.cases):
            i = proc.done
            res = _read(proc.status / f"{i}.json")
            if not isinstance(res, dict):
                return
            case = proc.cases[i]
            self.outcomes[case.name] = Outcome(
                rc=int(res["rc"]), devices=list(res.get("devices") or []), log=_tail(proc.status / f"{i}.log"),
                wall_s=round(res["t1"] - res["t0"], 2), process_s=round(res["t1"] - proc.launched, 2),
                limit_s=self.limit_of(case),
            )  # fmt: skip
            proc.done += 1

    def _check(self, proc: _Proc, now: float) -> list[Case] | None:
        """``None`` while ``proc`` runs normally; else the cases it left to run (after a stop or a crash)."""
        self._collect(proc)
        if proc.done == len(proc.cases):
            if proc.popen.poll() is None:
                proc.finished = proc.finished or now
                if now - proc.finished < EXIT_GRACE_S:
                    return None
                self._stop(proc)  # every case is done but the process does not exit
            return []
        i = proc.done
        case = proc.cases[i]
        started = _read(proc.status / f"{i}.start")
        limit = self.limit_of(case)
        since = float(started) if isinstance(started, int | float) else None
        exited = proc.popen.poll()
        if exited is None:
            if since is None and now - proc.launched > STARTUP_LIMIT_S:
                reason = f"timed out: the process did not start the case within {STARTUP_LIMIT_S:.0f} s"
            elif since is not None and now - since > limit:
                reason = f"timed out after {limit:.0f} s (the case's limit)"
            else:
                return None
            self._stop(proc)
            self._collect(proc)  # it may have finished just now
            if proc.done > i:
                return proc.cases[proc.done :]
            self.outcomes[case.name] = Outcome(
                rc=124, log=f"{reason}\n{_tail(proc.status / f'{i}.log')}", limit_s=limit,
                wall_s=round(now - since, 2) if since else None,
            )  # fmt: skip
            return proc.cases[i + 1 :]
        self._collect(proc)
        if proc.done > i:
            return proc.cases[proc.done :]
        log = _tail(proc.status / f"{i}.log") or _tail(proc.status / "process.log")
        self.outcomes[case.name] = Outcome(
            rc=exited or 1, log=f"the process died (exit {exited}) inside this case\n{log}", limit_s=limit,
            wall_s=round(now - since, 2) if since else None,
        )  # fmt: skip
        return proc.cases[i + 1 :]

    # ---- the loop ---------------------------------------------------------------------------------------------------
    def run(self, job_list: list[Job]) -> dict[str, Outcome]:
        queue: deque[Job] = deque(job_list)
        running: list[_Proc] = []
        while queue or running:
            now = time.time()
            if now >= self.deadline:
                for proc in running:
                    self._stop(proc)
                    self._collect(proc)
                    left = proc.cases[proc.done :]
                    self._skip(left[:1], "stopped at the check's deadline")
                    self._skip(left[1:], "not started: the check's deadline was reached")
                for job in queue:
                    self._skip(job.cases, "not started: the check's deadline was reached")
                return self.outcomes
            while queue and self._can_start(queue[0], running):
                job = queue.popleft()
                expected = self.expected_of(job)
                if expected is not None and now + expected > self.deadline:
                    self._skip(job.cases, f"not started: its modelled {expected:.0f} s would pass the deadline")
                    continue
                running += self._start(job)
            for proc in list(running):
                left = self._check(proc, time.time())
                if left is None:
                    continue
                running.remove(proc)
                if left:  # the rest of a stopped or crashed process: a fresh process, next in line
                    queue.appendleft(Job(left, alone=proc.job.alone))
            time.sleep(POLL_S)
        return self.outcomes

    def _can_start(self, job: Job, running: list[_Proc]) -> bool:
        if job.alone or any(p.job.alone for p in running):
            return not running
        return len(running) < self.lanes


def run_in_process(job_list: list[Job], work: Path, argv_of: Callable[[Case], list[str]], deadline: float) -> dict:
    """The CPU form's way: every case in this process, one after another (no per-case limit can be enforced here;
    the deadline is checked before each case)."""
    from recast_bench.gpucheck.group import run_logged

    outcomes: dict[str, Outcome] = {}
    logs = work / "status" / "in-process"
    logs.mkdir(parents=True, exist_ok=True)
    for job in job_list:
        for case in job.cases:
            t0 = time.time()
            if t0 >= deadline:
                outcomes[case.name] = Outcome(skipped="not started: the check's deadline was reached")
                continue
            log = logs / (case.name.replace("/", "-").replace("#", "_") + ".log")
            rc, devices = run_logged(case.name, argv_of(case), log)
            wall = round(time.time() - t0, 2)
            outcomes[case.name] = Outcome(rc=rc, devices=devices, log=_tail(log), wall_s=wall, process_s=wall)
    return outcomes
