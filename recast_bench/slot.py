"""``python -m recast_bench.slot [--per-gpu K] -- COMMAND...``: run COMMAND on a free GPU slot (``make bench -j N``).

Each visible GPU has ``K`` slots (``RUNS_PER_GPU``, default 1), each a lock file under ``--dir``. The launcher
takes the first free slot with ``flock`` (spreading runs over the GPUs before doubling up), sets
``CUDA_VISIBLE_DEVICES`` to that GPU and ``RECAST_BENCH_RUNS_PER_NODE`` to the number of slots (the GPU profile
divides the CPUs' loader workers by it), and replaces itself with COMMAND, which inherits the locked descriptor:
the slot is held exactly as long as the run lives, and freed by the kernel however it ends. With no slot free it
waits. Without a GPU, or with ``--per-gpu 0`` (a DDP run that spans every GPU itself), it runs COMMAND unchanged.

GPUs are those of ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi -L`` lists; torch is not imported.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS_PER_NODE_ENV = "RECAST_BENCH_RUNS_PER_NODE"
"""How many runs share this machine's CPUs; recast_bench.engine.device.default_workers divides loader workers by it."""


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids in ([], ["-1"]) else ids
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def default_dir() -> Path:
    return Path(os.environ.get("RECAST_BENCH_SLOT_DIR", f"/tmp/recast-bench-slots-{os.getuid()}"))


def take_slot(gpus: list[str], per_gpu: int, lock_dir: Path) -> tuple[int, str, int]:
    """Lock the first free slot, GPUs before repeats; returns ``(fd, gpu, k)``. Blocks until one is free."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(per_gpu):
            for gpu in gpus:
                path = lock_dir / f"gpu-{gpu.replace('/', '_')}-slot{k}.lock"
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return fd, gpu, k
        time.sleep(1.0 + random.random())  # every slot busy: wait for a run to end


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recast_bench.slot", description=__doc__.splitlines()[0])
    p.add_argument("--per-gpu", type=int, default=int(os.environ.get("RUNS_PER_GPU", "1") or 1))
    p.add_argument("--dir", type=Path, default=None, help="slot lock directory (default /tmp/recast-bench-slots-UID)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given")
    if args.per_gpu < 0:
        p.error("--per-gpu must be >= 0")
    gpus = visible_gpus() if args.per_gpu else []
    if not gpus:
        os.execvp(cmd[0], cmd)  # no GPU: nothing to share out
    fd, gpu, k = take_slot(gpus, args.per_gpu, args.dir or default_dir())
    os.set_inheritable(fd, True)  # the run holds the slot's lock until it exits
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, RUNS_PER_NODE_ENV: str(len(gpus) * args.per_gpu)}
    print(f"slot: GPU {gpu} (slot {k + 1} of {args.per_gpu}): {' '.join(cmd[:4])} ...", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 127  # pragma: no cover (exec does not return)


if __name__ == "__main__":
    sys.exit(main())
