"""Preflight of the GPU check: what the machine offers, and whether it can run the check at all (one line if not).

It stops the check (``UserError``, one line) when nvidia-smi lists a GPU that torch cannot use (a driver too old for
the wheel's CUDA, a broken install): the CPU form is never reported in place of a GPU that is there. It stops it too
when ``/dev/shm`` is smaller than what the loaders of the check's concurrent runs hold at once, and warns when less
than that is free.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch

from recast_bench.engine.device import check_cuda, configure_cublas
from recast_bench.errors import UserError
from recast_bench.perf.smi import gpu_details, gpu_names
from recast_bench.slot import shm_need_bytes, shm_space


def cuda_or_refuse() -> bool:
    """Whether torch can use CUDA here; raises one line when nvidia-smi lists a GPU that torch cannot use."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    listed = gpu_names()
    if listed and not available:
        why = next((str(w.message).strip().splitlines()[0] for w in caught if "CUDA" in str(w.message)), None)
        raise UserError(
            f"nvidia-smi lists {len(listed)} GPU(s) ({listed[0]}) but torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda or 'none'}) cannot use them{': ' + why if why else ''}. The check stops rather "
            "than pass on the CPU: install a driver for that CUDA version (CUDA 13 needs R580 or newer) or a torch "
            "build for this driver"
        )
    return available


def shm_check(runs: int, workers: int, batch: int, image_side: int) -> dict[str, Any]:
    """``/dev/shm`` against what the loaders of ``runs`` concurrent runs need (uint8 batches of ``image_side`` px
    squares); raises one line when the whole of it is too small. ``status``: ok, low (warning) or unknown."""
    space = shm_space()
    need = shm_need_bytes(runs, workers, batch, 3 * image_side * image_side) if workers else 0
    out: dict[str, Any] = {"shm_gb": None, "shm_need_gb": round(need / 2**30, 2)}
    if space is None:
        return out | {"shm_status": "unknown"}
    total, free = space
    out |= {"shm_gb": round(total / 2**30, 2), "shm_free_gb": round(free / 2**30, 2)}
    what = (
        f"the loaders need {need / 2**30:.2f} GiB ({runs} run(s) x ({workers} workers x 2 prefetched + 2) batches of "
        f"{batch} uint8 {image_side} px images)"
    )
    fix = f"start the container with --shm-size={max(1, math.ceil(1.5 * need / 2**30))}g, or use fewer loader workers"
    if total < need:
        raise UserError(f"/dev/shm is {total / 2**20:.0f} MiB but {what}: {fix} (trainer.num_workers)")
    if free < need:
        return out | {"shm_status": "low", "shm_warning": f"/dev/shm has {free / 2**20:.0f} MiB free but {what}: {fix}"}
    return out | {"shm_status": "ok"}


def preflight() -> dict[str, Any]:
    """Facts about the machine; raises UserError (one line) when a GPU is present but unusable."""
    configure_cublas()
    cuda = cuda_or_refuse()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cuda_available": cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "nvidia_smi": gpu_details(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    if cuda:
        for i in range(info["gpus"]):
            check_cuda(i)  # the test matmul: an unusable GPU stops the check here, in one line
        cap = torch.cuda.get_device_capability(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = f"sm_{cap[0]}{cap[1]}"
        info["arch_supported"] = info["capability"] in info["arch_list"] or any(
            a.startswith("compute_") for a in info["arch_list"]
        )
        info["gpu_mem_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:  # the newest CUDA version the driver supports, e.g. 13.0 (the wheel needs >= torch_cuda)
            major, minor = divmod(torch._C._cuda_getDriverVersion() // 10, 100)  # type: ignore[attr-defined]
            info["driver_cuda"] = f"{major}.{minor}"
        except Exception:  # noqa: BLE001 (private API; informative only)
            info["driver_cuda"] = None
        info["matmul_ok"] = True
    return info
