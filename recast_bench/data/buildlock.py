"""Coordination of concurrent builders of one cache entry, across processes and nodes sharing a file system.

The first builder creates ``<entry>.lock`` exclusively and rewrites it with an increasing heartbeat while it
works; the others wait for the entry to appear. A waiter takes the lock over only when the heartbeat has not
changed for ``stale_s`` seconds of its own clock, so a dead builder (a killed job on another node) does not block
the sweep, and no comparison of clocks between nodes is needed. Temporary files carry host, pid and a random
suffix, so writers on different nodes never share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` unique across nodes: host, pid and a random suffix."""
    return path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")


class BuildLock:
    """Run ``build`` for ``lock_path``'s entry unless another builder does; see the module docstring.

    Args:
        lock_path: the lock file.
        beat_s: heartbeat period of the holder.
        stale_s: a waiter takes over a lock whose heartbeat has not changed for this long.
    """

    def __init__(self, lock_path: Path, beat_s: float = 5.0, stale_s: float = 60.0, poll_s: float = 0.5) -> None:
        self.path = Path(lock_path)
        self.beat_s, self.stale_s, self.poll_s = beat_s, stale_s, poll_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8)}

    def _write(self, beat: int) -> None:
        tmp = temp_name(self.path)
        tmp.write_text(json.dumps({**self.owner, "beat": beat}))
        os.replace(tmp, self.path)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({**self.owner, "beat": 0}))
        return True

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def _take_over(self, seen: str) -> None:
        """Move a stale lock aside; ``rename`` succeeds for one taker only, and only if nobody rewrote it since."""
        if self._read() != seen:
            return
        aside = temp_name(self.path.with_name(self.path.name + ".stale"))
        try:
            os.rename(self.path, aside)
        except OSError:
            return
        aside.unlink(missing_ok=True)

    def run(self, done: Callable[[], bool], build: Callable[[], None]) -> bool:
        """Build unless ``done()`` becomes true while waiting. Returns True when this process built the entry."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seen, since = None, time.monotonic()
        while True:
            if done():
                return False
            if self._try_create():
                break
            now = self._read()
            if now != seen:
                seen, since = now, time.monotonic()
            elif now is not None and time.monotonic() - since > self.stale_s:
                self._take_over(now)
            time.sleep(self.poll_s)
        stop = threading.Event()

        def heartbeat() -> None:
            beat = 0
            while not stop.wait(self.beat_s):
                beat += 1
                with contextlib.suppress(OSError):
                    self._write(beat)

        thread = threading.Thread(target=heartbeat, daemon=True)
        thread.start()
        try:
            if not done():  # another builder may have finished between our check and our lock
                build()
            return True
        finally:
            stop.set()
            thread.join()
            if self.owner["token"] in (self._read() or ""):  # never remove a lock another builder took over
                self.path.unlink(missing_ok=True)
