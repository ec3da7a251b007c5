"""Where a run executes and how: the device (with its index), the execution profile, and the record of both.

Profiles (``trainer.profile``):

* ``cpu``: fp32, full-precision matmuls, no loader workers, deterministic kernels, eager (the project's CPU defaults).
* ``gpu``: bf16 autocast, TF32 matmuls and convolutions, persistent pinned loader workers sized to the machine,
  channels_last for ResNets, ``deterministic=warn`` with cuDNN benchmarking, and ``torch.compile``.
* ``auto`` (default): ``gpu`` when the run will train on a CUDA device, else ``cpu``.

A value the user sets explicitly (``trainer.precision=32-true``) always wins over the profile: profile-controlled
fields default to ``None`` in :class:`~recast_bench.config.TrainerConfig` and only ``None`` is filled in.

Determinism trade-off of the GPU profile: ``warn`` asks torch for deterministic kernels wherever they exist and
only warns where an op has none (instead of crashing a 100-epoch run on, e.g., a scatter-add backward).

cuDNN benchmarking (``trainer.cudnn_benchmark``) is on unless ``trainer.deterministic=true``. Sources: torch's
reproducibility notes (docs/source/notes/randomness.rst, "CUDA convolution benchmarking") say benchmarking may pick
different algorithms on later runs, even on the same machine, and that ``benchmark=False`` is what makes the
*selection* deterministic. Whether the selected algorithm is itself deterministic is a separate switch, which
``warn`` sets (``torch.use_deterministic_algorithms(True, warn_only=True)``): ATen hands the conv
``deterministicCuDNN() || deterministicAlgorithms()`` beside ``benchmarkCuDNN()``
(aten/src/ATen/native/Convolution.cpp), and the cuDNN path drops non-deterministic engines before it times them
(``filterEngineConfigs``, aten/src/ATen/native/cudnn/Conv_v8.cpp). Lightning warns that torch ignores
``cudnn.deterministic`` under ``benchmark=True``; that code says otherwise, and Lightning would turn benchmarking off
for any truthy ``deterministic``, so the engine passes ``benchmark`` to the Trainer itself. Under ``warn`` every
kernel stays deterministic within a run; between runs, which deterministic conv algorithm was fastest may differ,
a rounding-level difference of the kind ``warn`` already accepts. Runs are then reproducible up to those and to
bf16/TF32 rounding, which depends on the GPU model. ``trainer.deterministic=true`` restores hard determinism
(benchmarking off; ``cudnn_benchmark=true`` beside it is refused).

``trainer.compile`` (gpu profile: on) compiles the backbone's forward with ``torch.compile`` (engine/compile.py).
"""

from __future__ import annotations

import os
import resource
from typing import Any

import torch

from recast_bench.config import parse_deterministic
from recast_bench.errors import UserError
from recast_bench.perf.smi import gpu_names as nvidia_smi_gpus
from recast_bench.slot import RUNS_PER_NODE_ENV  # set by the bench slot launcher (stdlib only, no torch)

CUBLAS_WORKSPACE = ":4096:8"
"""cuBLAS needs this before its first call for deterministic GEMMs (torch checks it once, at that call)."""

MAX_WORKERS = 8


def configure_cublas() -> None:
    """Set the cuBLAS workspace for deterministic GEMMs unless the user chose one; harmless without CUDA."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects cgroup/SLURM CPU sets, unlike os.cpu_count()
    except AttributeError:  # pragma: no cover (non-Linux)
        return os.cpu_count() or 1


def default_workers(gpus: int) -> int:
    """Loader workers per run: the CPUs per GPU (or per concurrent run) on this machine, at most 8, at least 1."""
    share = max(gpus, int(os.environ.get(RUNS_PER_NODE_ENV, "0") or 0), 1)
    return max(1, min(_cpus() // share, MAX_WORKERS))


def uses_cuda(tcfg: Any) -> bool:
    """Whether the run trains on CUDA: explicitly asked for, or ``auto`` with a CUDA device present."""
    accel = str(tcfg.accelerator).lower()
    return accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())


def choose_profile(tcfg: Any) -> str:
    profile = str(getattr(tcfg, "profile", "auto") or "auto").lower()  # checked by TrainerConfig.__post_init__
    if profile != "auto":
        return profile
    return "gpu" if uses_cuda(tcfg) else "cpu"


def profile_values(profile: str, family: str, gpus: int = 1) -> dict[str, Any]:
    """The settings of ``profile`` for a backbone ``family`` (``vit``/``resnet``) on a machine with ``gpus``."""
    if profile == "cpu":
        return {
            "precision": "32-true",
            "num_workers": 0,
            "persistent_workers": False,
            "pin_memory": False,
            "deterministic": True,
            "matmul_precision": "highest",
            "channels_last": False,
            "compile": False,
        }
    workers = default_workers(gpus)
    return {
        # bf16 has fp32's exponent range: no loss scaling, and no overflow aborting a run (fp16's failure mode).
        "precision": "bf16-mixed",
        "num_workers": workers,
        "persistent_workers": workers > 0,  # the engine builds a Trainer per task: do not respawn per epoch
        "pin_memory": True,
        "deterministic": "warn",
        "matmul_precision": "high",  # TF32 for fp32 matmuls (what autocast leaves in fp32)
        "channels_last": family == "resnet",
        "compile": True,
    }


PROFILE_FIELDS = (*profile_values("cpu", "vit"), "cudnn_benchmark")


def apply_profile(tcfg: Any, family: str) -> str:
    """Fill every profile field of ``tcfg`` that is ``None`` from the chosen profile; returns the profile name.

    Idempotent: a config already resolved keeps its values (and its recorded ``resolved_profile``).
    """
    if getattr(tcfg, "resolved_profile", None):
        return str(tcfg.resolved_profile)
    profile = choose_profile(tcfg)
    gpus = torch.cuda.device_count() if profile == "gpu" and torch.cuda.is_available() else 1
    for key, value in profile_values(profile, family, gpus).items():
        if getattr(tcfg, key, None) is None:
            setattr(tcfg, key, value)
    tcfg.deterministic = parse_deterministic(tcfg.deterministic)  # values checked by TrainerConfig.__post_init__
    if int(tcfg.num_workers) == 0:
        tcfg.persistent_workers = False  # torch refuses persistent workers without workers
    if getattr(tcfg, "cudnn_benchmark", None) is None:
        tcfg.cudnn_benchmark = tcfg.deterministic is not True  # see the module docstring
    elif tcfg.cudnn_benchmark and tcfg.deterministic is True:
        raise UserError(
            "trainer.cudnn_benchmark=true contradicts trainer.deterministic=true (benchmarking picks conv algorithms "
            "by timing, so runs differ); use trainer.deterministic=warn or drop trainer.cudnn_benchmark"
        )
    tcfg.resolved_profile = profile
    return profile


def set_backend_flags(tcfg: Any) -> None:
    """Process-wide math settings of the resolved config (TF32 for matmuls and cuDNN convolutions, cuDNN autotuning)."""
    torch.set_float32_matmul_precision(str(tcfg.matmul_precision))
    torch.backends.cudnn.allow_tf32 = tcfg.matmul_precision != "highest"
    torch.backends.cudnn.benchmark = bool(tcfg.cudnn_benchmark)  # the Trainer sets it again (its ``benchmark``)


def to_channels_last(model: torch.nn.Module) -> None:
    """NHWC for every 4-d parameter and buffer of ``model`` (conv kernels, Piggyback masks, CLR kernels), and NHWC
    generated kernels for modules that generate them (a module's ``channels_last_()``: RECAST's conv banks).

    ``model.to(memory_format=torch.channels_last)`` would refuse RECAST's 5-d template banks; tensors of other ranks
    are left as they are. Idempotent: the learner calls it before every task, after the method added its modules.
    """
    nhwc = torch.channels_last
    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                if p.dim() == 4 and not p.is_contiguous(memory_format=nhwc):
                    p.data = p.data.contiguous(memory_format=nhwc)
            for name, b in list(m.named_buffers(recurse=False)):
                if b.dim() == 4 and not b.is_contiguous(memory_format=nhwc):
                    setattr(m, name, b.contiguous(memory_format=nhwc))
            own = getattr(m, "channels_last_", None)
            if callable(own):
                own()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_device_index(devices: Any, rank: int | None = None) -> int:
    """The CUDA index this process uses: Lightning maps local rank r to ``devices[r]`` for a list, else to r."""
    rank = local_rank() if rank is None else rank
    if isinstance(devices, str) and "," in devices:
        devices = [int(d) for d in devices.split(",") if d.strip()]
    if isinstance(devices, list | tuple):
        if not devices:
            raise UserError("trainer.devices is an empty list")
        return int(devices[rank % len(devices)])
    return rank


def _cuda_build() -> str:
    arch = " ".join(torch.cuda.get_arch_list()) or "none"
    return f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'} (architectures: {arch})"


def check_cuda(index: int) -> None:
    """A test matmul on CUDA device ``index``; any failure is one line naming the GPU and the torch build."""
    n = torch.cuda.device_count()
    if index >= n:
        raise UserError(f"CUDA device {index} requested but only {n} visible (check trainer.devices)")
    name = "?"
    try:
        name = torch.cuda.get_device_name(index)
        a = torch.randn(64, 64, device=f"cuda:{index}")
        float((a @ a).sum())  # a cuBLAS call and a sync: unsupported architectures and driver faults surface here
    except Exception as e:  # noqa: BLE001 (any CUDA failure means the GPU cannot be used)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"CUDA device {index} ({name}) is not usable: {first}; {_cuda_build()}. "
            "Use trainer.accelerator=cpu to run on the CPU"
        ) from None


def cuda_hidden() -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` deliberately hides every GPU (empty or ``-1``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return env is not None and [d.strip() for d in env.split(",") if d.strip()] in ([], ["-1"])


def _cuda_init_error() -> str:
    """Why torch cannot use CUDA, in torch's own first line (e.g. a driver too old for this wheel)."""
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 (any failure is the reason we report)
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "torch.cuda.is_available() is False"


def run_device(tcfg: Any) -> torch.device:
    """The device this process trains and evaluates on, with its index; a requested but unusable GPU is an error.

    ``auto`` without CUDA is the CPU, unless nvidia-smi lists a GPU that torch cannot use (typically a driver too old
    for the CUDA build of the torch wheel): that is an error too, never a silent fallback to the CPU profile, as is
    ``auto`` with a CUDA device that fails the test matmul. GPUs hidden on purpose (``CUDA_VISIBLE_DEVICES=``) are not
    an error.
    """
    configure_cublas()  # the test matmul is the process's first cuBLAS call
    accel = str(tcfg.accelerator).lower()
    if accel not in ("gpu", "cuda", "auto"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        gpus = [] if cuda_hidden() else nvidia_smi_gpus()
        if accel == "auto" and gpus:
            raise UserError(
                f"nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}) but torch cannot use CUDA: {_cuda_init_error()}; "
                f"{_cuda_build()}. Install an NVIDIA driver that supports CUDA {torch.version.cuda or '?'}, "
                "or run on the CPU with trainer.accelerator=cpu"
            )
        if accel == "auto":
            return torch.device("cpu")
        raise UserError(
            f"trainer.accelerator={tcfg.accelerator} but CUDA is not available here ({_cuda_build()}); "
            "use trainer.accelerator=cpu or auto"
        )
    index = local_device_index(tcfg.devices)
    check_cuda(index)
    torch.cuda.set_device(index)  # methods' own ".cuda()" work and Avalanche land on this rank's GPU
    return torch.device("cuda", index)


def autocast_dtype(precision: Any) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string, ``None`` when it does not autocast."""
    text = str(precision)
    if text.startswith("bf16") and "mixed" in text:
        return torch.bfloat16
    if text.startswith("16") and "mixed" in text:
        return torch.float16
    return None


def autocast(device: torch.device, precision: Any) -> torch.autocast:
    """Autocast as Lightning applies it for ``precision`` (disabled for true-precision settings).

    ``cache_enabled=False`` as Lightning's: a compiled backbone is guarded on the autocast cache flag, so evaluation
    under any other setting would compile another graph. The cache holds casts of leaf tensors that require grad
    only, which evaluation (everything frozen) never has."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False)


# ---- the record in results.json ---------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_mb() -> float:
    """Peak resident set of this process (Linux ru_maxrss, KiB). It includes touched pages of the memory-mapped
    data cache, so compare it only between runs over the same data."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_mem_mb(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on ``device`` since the run started (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def device_record(device: torch.device, tcfg: Any) -> dict[str, Any]:
    """What results.json says about where and how the run executed."""
    rec: dict[str, Any] = {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": str(tcfg.precision),
        "profile": {"name": getattr(tcfg, "resolved_profile", None), **{k: getattr(tcfg, k) for k in PROFILE_FIELDS}},
        "cuda_version": torch.version.cuda,
    }
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        rec["gpu_capability"] = f"sm_{cap[0]}{cap[1]}"
        rec["gpu_mem_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return rec
