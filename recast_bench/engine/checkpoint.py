"""Atomic, safe files: safetensors for tensors, JSON for everything else, and a run lock.

Every write goes to a temporary file in the same directory and is renamed into place, so a run killed at any
moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    """An exclusive lock on an output directory so two runs never write the same results.

    The lock file holds the owner's pid; a lock whose process is gone (killed run) is stale and taken over.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid) and pid != os.getpid():
                    raise UserError(
                        f"{self.path.parent} is in use by another run (pid {pid}); wait or use another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise UserError(f"cannot lock {self.path.parent}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
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
