"""``nvidia-smi``, asked in one place: GPU names, their details, the smallest card's memory.

Standard library only (no torch): the bench's slot launcher and the engine's device check import it before torch.
Every query has the same time limit and the same failure rule: a missing, failing or hanging ``nvidia-smi`` gives no
rows (and a reason, for the report that shows it). It lists every GPU: it ignores ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import shutil
import subprocess

NVIDIA_SMI_TIMEOUT_S = 10.0
_SMI_GPUS: dict[str, tuple[str, ...]] = {}
"""GPU names per ``nvidia-smi`` executable path: a run asks once."""


def query(fields: str, units: bool = True) -> list[list[str]] | str:
    """One row of stripped values per GPU for ``--query-gpu=fields`` (CSV, no header; ``units=False`` drops units
    such as MiB), or a one-line reason when ``nvidia-smi`` is absent, fails or hangs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={fields}", f"--format={fmt}"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return f"nvidia-smi exit {out.returncode}: {(out.stderr or out.stdout).strip().splitlines()[:1]}"
    return [[v.strip() for v in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpu_names() -> list[str]:
    """The names of the GPUs ``nvidia-smi`` lists; ``[]`` when it is not on PATH, fails or hangs. Cached per
    executable path, so a run asks once."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    if exe not in _SMI_GPUS:
        rows = query("name")
        _SMI_GPUS[exe] = tuple(r[0] for r in rows) if isinstance(rows, list) else ()
    return list(_SMI_GPUS[exe])


DETAIL_FIELDS = "name,driver_version,memory.total,compute_cap"


def gpu_details() -> list[dict[str, str]] | str:
    """Driver, memory and compute capability of every GPU, or why they are unknown (informative only)."""
    rows = query(DETAIL_FIELDS)
    if isinstance(rows, str):
        return rows
    keys = DETAIL_FIELDS.split(",")
    return [dict(zip(keys, r, strict=False)) for r in rows]


def smallest_memory_mb() -> float | None:
    """The memory of the smallest GPU ``nvidia-smi`` lists, in MiB; ``None`` when unknown."""
    rows = query("memory.total", units=False)
    try:
        return min(float(r[0]) for r in rows) if isinstance(rows, list) and rows else None
    except ValueError:
        return None
