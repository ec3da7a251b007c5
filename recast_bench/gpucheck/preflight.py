"""Preflight of the GPU check: what the machine offers, and whether CUDA works at all (one line if not)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import torch

from recast_bench.engine.device import check_cuda, configure_cublas


def nvidia_smi() -> list[dict[str, str]] | str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    fields = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return f"nvidia-smi exit {out.returncode}: {(out.stderr or out.stdout).strip().splitlines()[:1]}"
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.stdout.splitlines()]


def shm_gb() -> float | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return round(st.f_frsize * st.f_blocks / 2**30, 2)


def preflight() -> dict[str, Any]:
    """Facts about the machine; raises UserError (one line) when CUDA is present but unusable."""
    configure_cublas()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else [],
        "cuda_available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "nvidia_smi": nvidia_smi(),
        "shm_gb": shm_gb(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    if info["cuda_available"]:
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
