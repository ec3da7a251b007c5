"""Atomic, safe files: safetensors for tensors, JSON for everything else, and a run lock.

Every write goes to a temporary file in the same directory and is renamed into place, so a run killed at any
moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recast_bench.engine.faults import failpoint
from recast_bench.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_replace(path: Path, write) -> None:  # noqa: ANN001 (callable taking a tmp path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should be as readable as any other file
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        failpoint("checkpoint_write")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON (``indent=None`` for compact machine-only files such as cache sidecars)."""

    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=False, allow_nan=True)
            f.write("\n")

    _atomic_replace(Path(path), w)


def read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        with open(p) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{p} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Atomically write ``tensors`` as safetensors; returns the file size in bytes."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))
    return Path(path).stat().st_size


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} not found")
    try:
        return load_file(str(p))
    except Exception as e:
        raise UserError(f"{p} is not a valid safetensors file ({type(e).__name__})") from None


def tensor_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise UserError(f"{path} is not a valid safetensors file ({type(e).__name__})") from None


class RunLock:
    """An exclusive lock on an output directory so two runs never write the same results, across nodes too.

    The lock file holds JSON: the owner's host, pid, SLURM job id (if any) and a heartbeat time that a daemon
    thread refreshes every ``heartbeat_s``. Another process takes the lock over only when it is stale:

    * same host and the owner's pid is dead (a killed run), or
    * the same SLURM job id (this job's earlier incarnation, before a requeue, possibly on another node), or
    * the heartbeat is older than ``stale_s`` (the owner's node died; pids mean nothing across hosts).

    A legacy lock holding a bare pid is judged by that pid on this host. Taking over a stale lock and creating a
    new one are two steps; two processes doing both within the same instant could still race, which is far below
    the rate at which the bench launcher starts runs on one directory.
    """

    def __init__(self, out_dir: str | Path, heartbeat_s: float = 30.0, stale_s: float = 600.0) -> None:
        self.path = Path(out_dir) / ".lock"
        self.held = False
        self.heartbeat_s = heartbeat_s
        self.stale_s = max(stale_s, 3 * heartbeat_s)
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def identity() -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}

    def _record(self) -> str:
        return json.dumps({**self.identity(), "heartbeat": time.time()})

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._stale(owner):
                    where = (
                        f"pid {owner.get('pid')} on {owner.get('host')}" if owner.get("host") else f"pid {owner['pid']}"
                    )
                    raise UserError(
                        f"{self.path.parent} is in use by another run ({where}); wait or use another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process or node died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
            self.held = True
            self._start_heartbeat()
            return
        raise UserError(f"cannot lock {self.path.parent}")

    def _owner(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:
            return None
        if isinstance(owner, int):  # legacy lock: a bare pid, on this host
            return {"host": socket.gethostname(), "pid": owner, "job": None, "heartbeat": None, "legacy": True}
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict[str, Any]) -> bool:
        me = self.identity()
        pid = owner.get("pid")
        if owner.get("host") == me["host"] and pid == me["pid"]:
            return True  # our own leftover (e.g. a lock not released before an exec)
        if owner.get("job") and owner.get("job") == me["job"]:
            return True  # a requeued SLURM job taking over from its own earlier run
        if owner.get("host") == me["host"] and isinstance(pid, int) and not _alive(pid):
            return True
        beat = owner.get("heartbeat")
        if owner.get("legacy") or beat is None:
            return False
        # Heartbeats are wall-clock times of the owner's node: nodes need clocks within stale_s (NTP) of each other.
        return time.time() - float(beat) > self.stale_s

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(self._stop,), name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                owner = self._owner()
                if owner is None or owner.get("pid") != os.getpid() or owner.get("host") != socket.gethostname():
                    return  # taken over (or removed): never overwrite someone else's lock
                tmp = self.path.with_name(f".lock.{socket.gethostname()}.{os.getpid()}.tmp")
                tmp.write_text(self._record())
                os.replace(tmp, self.path)
            except OSError:
                continue  # a transient filesystem error: try again at the next beat

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._stop = self._thread = None
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed child not yet reaped) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
