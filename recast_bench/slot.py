"""``python -m recast_bench.slot [--per-gpu K] -- COMMAND...``: run COMMAND on a free GPU slot (``make bench -j N``).
``python -m recast_bench.slot --choose [--backbone B]``: print how many runs per GPU ``make bench`` should start, and
how many at once in all (see :func:`choose`).

Each visible GPU has ``K`` slots (``RUNS_PER_GPU``, default 1), each a lock file under ``--dir``. The launcher
takes the first free slot with ``flock`` (spreading runs over the GPUs before doubling up), sets
``CUDA_VISIBLE_DEVICES`` to that GPU and ``RECAST_BENCH_RUNS_PER_NODE`` to the number of slots (the GPU profile
divides the CPUs' loader workers by it), and replaces itself with COMMAND, which inherits the locked descriptor:
the slot is held exactly as long as the run lives, and freed by the kernel however it ends. With no slot free it
waits. Without a GPU, or with ``--per-gpu 0`` (a DDP run that spans every GPU itself), it runs COMMAND unchanged.

GPUs are those of ``CUDA_VISIBLE_DEVICES`` when set, else those ``nvidia-smi`` lists (:mod:`recast_bench.perf.smi`);
torch is not imported.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import sys
import time
from pathlib import Path

from recast_bench.perf.smi import gpu_names, smallest_memory_mb

RUNS_PER_NODE_ENV = "RECAST_BENCH_RUNS_PER_NODE"
"""How many runs share this machine's CPUs; recast_bench.engine.device.default_workers divides loader workers by it."""

DEFAULT_RUNS_PER_GPU = 2
"""Runs per GPU when no ``gpu-check.json`` measured a run's memory (modelled: see :data:`MODELLED_RUN_MB`)."""
MAX_RUNS_PER_GPU = 3
"""The cost model's concurrency gains stop at 3 runs (a fourth run has nothing left to fill)."""
MODELLED_RUN_MB = 8000.0
"""Peak GPU memory of one ViT-S or ResNet-34 run at batch 64 in bf16 (activations 3-5 GB, weights, gradients and
AdamW state under 0.5 GB, evaluation at batch 256), with room to spare. Modelled, not measured."""
MEMORY_OVERHEAD, CONTEXT_MB, MEMORY_USE = 1.25, 800.0, 0.9
"""A run's GPU memory: its measured peak of allocated tensors x 1.25 (the caching allocator's reserve and
fragmentation) + 800 MB (CUDA context, cuBLAS and cuDNN workspaces, outside torch's allocator); runs may fill 90 %
of the card."""
MIN_WORKERS_PER_RUN = 2
"""Two workers feed the uint8 device path at over 6,000 img/s (README, "On a CPU"); one more CPU runs the training
process itself."""
PREFETCH = 2
"""torch DataLoader's default prefetch_factor: batches in flight per worker."""
MAX_WORKERS = 8
"""As recast_bench.engine.device.MAX_WORKERS (loader workers per run)."""


def shm_need_bytes(runs: int, workers: int, batch: int, image_bytes: int) -> int:
    """/dev/shm the loaders of ``runs`` concurrent runs hold at once: each worker's prefetched batches plus the two
    batches the training process holds (the one in use and the next), for one loader at a time (persistent train
    and val workers hold nothing once their epoch is consumed)."""
    return runs * (workers * PREFETCH + 2) * batch * image_bytes


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (non-Linux)
        return os.cpu_count() or 1


def shm_space() -> tuple[int, int] | None:
    """``(total, free)`` bytes of /dev/shm, ``None`` where there is none."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail


def card_mb(check: dict) -> float | None:
    """The smallest visible GPU's memory: from a gpu-check report, else ``nvidia-smi``."""
    gb = (check.get("preflight") or {}).get("gpu_mem_gb")
    if gb:
        return float(gb) * 1024
    return smallest_memory_mb()


def choose(gpus: int, backbone: str, check: dict, cpus: int, shm: int | None) -> tuple[int, str]:
    """Runs per GPU for ``make bench`` and why: as many as the card's memory holds (the measured peak of the
    backbone's gpu-check cases, else the modelled one), the CPUs can give two loader workers each, and /dev/shm can
    hold their batches; at least 1, at most :data:`MAX_RUNS_PER_GPU`."""
    if gpus < 1:
        return 1, "no GPU visible: one run at a time"
    fam = "resnet" if "resnet" in backbone else "vit"
    peak = ((check.get("cost_inputs") or {}).get(fam) or {}).get("peak_gpu_mem_mb")
    card = card_mb(check)
    if peak and card:
        per_run = float(peak) * MEMORY_OVERHEAD + CONTEXT_MB
        by_mem, mem_why = int(MEMORY_USE * card // per_run), f"{per_run / 1024:.1f} GB per run (measured peak)"
    elif card:
        by_mem = int(MEMORY_USE * card // MODELLED_RUN_MB)
        by_mem, mem_why = min(by_mem, DEFAULT_RUNS_PER_GPU), "no gpu-check.json: the modelled default"
    else:
        by_mem, mem_why = DEFAULT_RUNS_PER_GPU, "card memory unknown: the modelled default"
    by_cpu = cpus // (gpus * (MIN_WORKERS_PER_RUN + 1))
    k = max(1, min(MAX_RUNS_PER_GPU, by_mem, by_cpu))
    why = f"{mem_why}, {cpus} CPUs for {gpus} GPU(s)"
    if shm is not None:
        photo = 3 * 256 * 256  # the cache's 256 px squares for a 224 px model (data.transforms.resize_size)
        while k > 1 and shm_need_bytes(gpus * k, min(MAX_WORKERS, cpus // (gpus * k)), 256, photo) > shm:
            k -= 1
        why += f", /dev/shm {shm / 2**30:.1f} GiB"
    return k, why


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        return [] if ids in ([], ["-1"]) else ids
    return [str(i) for i in range(len(gpu_names()))]


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


def choose_here(backbone: str, check_path: Path = Path("gpu-check.json")) -> tuple[int, int, str]:
    """:func:`choose` on this machine: ``(runs per GPU, visible GPUs, why)``; a report not measured on a GPU is
    ignored."""
    check: dict = {}
    if check_path.is_file():
        try:
            data = json.loads(check_path.read_text())
            check = data if (data.get("device") or {}).get("type") == "cuda" else {}
        except ValueError:
            check = {}
    gpus = len(visible_gpus())
    space = shm_space()
    k, why = choose(gpus, backbone, check, _cpus(), space[0] if space else None)
    return k, gpus, why


def _choose_main(args: argparse.Namespace) -> int:
    """``K JOBS``: runs per GPU and concurrent runs in all; with ``--per-gpu`` given, only JOBS is worked out."""
    if args.per_gpu is not None:
        k, gpus, why = args.per_gpu, len(visible_gpus()), "RUNS_PER_GPU given"
    else:
        k, gpus, why = choose_here(args.backbone, Path(args.check))
    jobs = max(1, gpus * k) if k > 0 else 1  # RUNS_PER_GPU=0: every run spans all GPUs itself
    print(f"{k} {jobs}")
    if args.explain:
        print(f"slot: {k} runs per GPU, {jobs} at once ({why})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recast_bench.slot", description=__doc__.splitlines()[0])
    p.add_argument("--per-gpu", type=int, default=None, help="slots per GPU (default: $RUNS_PER_GPU, else 1)")
    p.add_argument("--dir", type=Path, default=None, help="slot lock directory (default /tmp/recast-bench-slots-UID)")
    p.add_argument("--choose", action="store_true", help="print 'RUNS_PER_GPU JOBS' for make bench and exit")
    p.add_argument("--backbone", default="vit_small", help="with --choose: the bench's backbone")
    p.add_argument("--check", default="gpu-check.json", help="with --choose: the gpu-check report to read")
    p.add_argument("--explain", action="store_true", help="with --choose: say why on stderr")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.choose:
        return _choose_main(args)
    if args.per_gpu is None:
        args.per_gpu = int(os.environ.get("RUNS_PER_GPU", "1") or 1)
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
