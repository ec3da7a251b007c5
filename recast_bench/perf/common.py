"""Measuring tools shared by every figure (``perf``, ``gpu-check``, the deploy and data benches): timers, steady
images/s, peak memory, machine info, checks.

Timings that are compared are taken round-robin in one process (A, B, C, then B, C, A, ...) and summarised by
their median, so slow drift of the machine (other processes, thermal state) hits every contestant alike.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

UNAVAILABLE = "unavailable: "


def unavailable(reason: str) -> str:
    """The value of a figure that could not be measured: an explicit string, never a made-up number."""
    return UNAVAILABLE + reason


def is_unavailable(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(UNAVAILABLE)


def interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, min_sample_s: float = 0.05
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, taken round-robin after ``warmup`` rounds.

    The starting contestant rotates every round, so none is always first after the others (cache state). A sample
    of a fast function calls it enough times (sized on the last warm-up call) to last ``min_sample_s``, so that
    millisecond calls are not dominated by the timer or by one preemption from another process.
    """
    names = list(fns)
    number = dict.fromkeys(names, 1)
    for _ in range(max(1, warmup)):
        for n in names:
            t0 = time.perf_counter()
            fns[n]()
            number[n] = max(1, min(1000, int(min_sample_s / max(time.perf_counter() - t0, 1e-6))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            for _ in range(number[n]):
                fns[n]()
            samples[n].append((time.perf_counter() - t0) / number[n])
    return samples


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def timed_ms(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``fn(i)`` over ``repeats`` calls. CPU time is this process's, which other
    jobs on a shared machine do not inflate (with one torch thread it is the work done)."""
    wall, cpu = [], []
    for i in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(i)
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op off CUDA), so a host clock reads the work done, not queued."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def steady_img_s(step: Callable[[], Any], batch: int, steps: int, warmup: int, device: torch.device | str) -> float:
    """Images/s of ``steps`` calls of ``step`` (one batch of ``batch`` images each) after ``warmup`` untimed calls,
    the device synchronised at both ends of the timed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the figure is a looser lower bound


class PeakRSS:
    """Increase of this process's peak resident memory inside the ``with`` block, in MiB (``mb``).

    Linux lets a process reset its own high-water mark (``echo 5 > /proc/self/clear_refs``), so the peak is exact
    and costs nothing while measuring. Elsewhere ``mb`` stays ``None`` and the figure is reported unavailable.
    Freed memory is handed back to the OS first (glibc ``malloc_trim``); without that, buffers freed by an earlier
    figure would be reused silently and a later figure would read near zero. Still a lower bound on what a fresh
    process needs on top of its baseline.
    """

    def __init__(self) -> None:
        self.mb: float | None = None

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _malloc_trim()
        self._base = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._ok = self._base is not None
        except OSError:
            self._ok = False
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_kb("VmHWM")
        if self._ok and hwm is not None and self._base is not None:
            self.mb = max(0, hwm - self._base) / 1024.0

    def value(self) -> float | str:
        return self.mb if self.mb is not None else unavailable("peak RSS needs Linux /proc/self/clear_refs")


class PeakCuda:
    """Peak CUDA memory allocated by torch inside the ``with`` block, in MiB (``mb``); ``None`` without CUDA."""

    def __init__(self) -> None:
        self.mb: float | None = None

    def __enter__(self) -> PeakCuda:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.mb = torch.cuda.max_memory_allocated() / 2**20


def machine_info() -> dict[str, Any]:
    """What the figures depend on: cores, threads, library versions, load, date."""
    import timm

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_count": os.cpu_count() or 0,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        "cpu_model": cpu_model,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        # Other processes on the machine slow every figure; the ratios are interleaved to cancel most of it.
        "load_avg_1m_at_start": round(load[0], 2),
    }


def non_finite_fields(obj: Any, path: str = "") -> list[str]:
    """Paths of every value that is neither a finite number, a bool, a plain string, nor an explicit unavailable."""
    bad: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += non_finite_fields(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            bad += non_finite_fields(v, f"{path}[{i}]")
    elif isinstance(obj, bool | str):
        pass
    elif isinstance(obj, int | float):
        if not math.isfinite(obj):
            bad.append(path)
    else:
        bad.append(path)  # None or an unexpected type: every field must say something
    return bad


def error_reason(e: BaseException) -> str:
    """One line for an ``unavailable`` field: what failed, not a traceback."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]
