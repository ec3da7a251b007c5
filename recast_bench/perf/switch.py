"""Task-switch latency of a deployed RECAST model: read a task's files, load them, regenerate the weights.

:func:`switch_task` is the switch itself (load a task's own state and head, then regenerate the generated weights),
timed here by parts and by ``python -m recast_bench.deploy.bench`` from a task pack; both time this one function.

Two tasks' states (coefficients via ``method.task_state``, head) are saved as safetensors, as the engine saves
them. A switch reads both files, assigns them (``method.load_task_state`` and the head) and regenerates every
generated weight into the layers' inference cache, so the next forward runs at the plain model's speed. The files
are small and stay in the page cache, so this is the latency of a warm device, not of a cold disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from recast_bench.engine.method import Method, assign_state
from recast_bench.engine.model import TaskModel
from recast_bench.perf.common import median
from recast_bench.perf.inference import perturb_coefficients
from recast_bench.recast.layers import regenerate


def switch_task(model: TaskModel, method: Method, own: dict, head: dict, layers: list[torch.nn.Module]) -> None:
    """Make a task current: its own state through ``method.load_task_state``, its head, then :func:`regenerate`."""
    method.load_task_state(model, own)
    assign_state(model, head)
    regenerate(layers)


def _head_state(model: TaskModel) -> dict[str, torch.Tensor]:
    return {f"heads.t0.{k}": v.detach().clone().contiguous() for k, v in model.heads["t0"].state_dict().items()}


def switch_figures(model: TaskModel, method: Method, repeats: int, seed: int, image_size: int) -> dict[str, Any]:
    """Median milliseconds of a full switch and of its parts; checks a switched model reproduces the task."""
    from recast_bench.recast.surgery import reparam_modules

    layers = list(reparam_modules(model).values())
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as tmp:
        files, expected = [], []
        for t in range(2):
            perturb_coefficients(model, 0.05, seed + 1 + t)
            with torch.no_grad():
                model.heads["t0"].weight.add_(0.01 * torch.randn(model.heads["t0"].weight.shape))
            d = Path(tmp) / f"task{t}"
            d.mkdir()
            save_file(method.task_state(model), str(d / "state.safetensors"))
            save_file(_head_state(model), str(d / "head.safetensors"))
            files.append(d)
            with torch.inference_mode():
                expected.append(model(x, 0))
        parts: dict[str, list[float]] = {"load_ms": [], "assign_ms": [], "regenerate_ms": [], "total_ms": []}
        for r in range(repeats + 2):  # the first two switches warm up the allocator and the page cache
            d = files[r % 2]
            t0 = time.perf_counter()
            state = load_file(str(d / "state.safetensors"))
            head = load_file(str(d / "head.safetensors"))
            t1 = time.perf_counter()
            method.load_task_state(model, state)
            assign_state(model, head)
            t2 = time.perf_counter()
            regenerate(layers)
            t3 = time.perf_counter()
            if r >= 2:
                for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    parts[k].append(1000 * v)
        max_diff = 0.0
        for t in (0, 1, 0):
            own, head = (load_file(str(files[t] / f)) for f in ("state.safetensors", "head.safetensors"))
            switch_task(model, method, own, head, layers)
            with torch.inference_mode():
                max_diff = max(max_diff, float((model(x, 0) - expected[t]).abs().max()))
        state_bytes = (files[0] / "state.safetensors").stat().st_size
    return {
        "repeats": repeats,
        "generated_layers": len(layers),
        **{f"median_{k}": median(v) for k, v in parts.items()},
        "state_file_bytes": state_bytes,
        "max_abs_logit_diff_after_switch": max_diff,
        "outputs_match": max_diff <= 1e-4,
    }
