"""Per-task size of every registered method: trainable numbers (head excluded) and bytes of its task file.

Each method runs its contract on the real architecture with seeded random weights: ``setup``, then
``on_task_start`` with a four-image task (data-driven inits such as RoSA's or InfLoRA's need a loader), then the
engine's freezing. Bytes are those of ``method.task_state`` written as safetensors without metadata, which is
what a device must receive to learn a task; the head is reported apart. ``packed_bytes`` is the same numbers as
one tensor, i.e. the file without the per-tensor names in its header.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from recast_bench.data.stream import Task
from recast_bench.engine.method import Method
from recast_bench.perf.common import error_reason, unavailable
from recast_bench.perf.models import count_task_params, engine_trainable, method_model, seeded_backbone


def _tiny_task(image_size: int, seed: int) -> tuple[Task, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(4, 3, image_size, image_size, generator=g), torch.tensor([0, 1, 0, 1]))
    return Task("perf", 10, ds, ds, ds), DataLoader(ds, batch_size=2)


def _file_bytes(tensors: dict[str, torch.Tensor], path: Path) -> int:
    if not tensors:
        return 0
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return path.stat().st_size


def size_of(
    name: str, backbone: torch.nn.Module, spec: Any, cache_dir: str, seed: int, tmp: Path, overrides: dict | None = None
) -> dict:
    """Trainable numbers and file bytes of method ``name`` on ``backbone`` (one task)."""
    model, method = method_model(name, backbone, spec, cache_dir, seed, overrides)
    task, loader = _tiny_task(spec.image_size, seed)
    if type(method).on_task_start is not Method.on_task_start:
        method.on_task_start(model, 0, task, loader)
    engine_trainable(model, method)
    state = method.task_state(model)
    flat = [v.detach().float().flatten() for v in state.values()]
    head = dict(model.heads["t0"].state_dict())
    shared = method.shared_state(model)
    return {
        "task_params": count_task_params(model, method),
        "state_tensors": len(state),
        "bytes": _file_bytes(state, tmp / f"{name}.safetensors"),
        "packed_bytes": _file_bytes({"state": torch.cat(flat)} if flat else {}, tmp / f"{name}_packed.safetensors"),
        "head_bytes": _file_bytes(head, tmp / f"{name}_head.safetensors"),
        # Shared trained state (fine-tuning's whole backbone): what deploying a task needs besides its own file.
        "shared_bytes": _file_bytes(shared, tmp / f"{name}_shared.safetensors"),
    }


def size_figures(
    backbones: list[str], seed: int, cache_dir: str, weights_dir: str, overrides: dict | None = None
) -> dict[str, Any]:
    """``{backbone: {method: {...} | "unavailable: ..."}}`` over every registered method."""
    from recast_bench.registry import METHODS, load_all

    load_all()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bname in backbones:
            backbone, spec, _ = seeded_backbone(bname, seed, weights_dir)
            out[bname] = {}
            for name in METHODS.names():
                cls = METHODS.get(name)
                if getattr(cls, "runner", "lightning") != "lightning":
                    out[bname][name] = unavailable(
                        f"{cls.runner} strategy: it trains the shared network through its own learner and keeps no "
                        "per-task state file"
                    )
                    continue
                if spec.family not in cls.families:
                    out[bname][name] = unavailable(f"{name} supports {', '.join(cls.families)}, not {spec.family}")
                    continue
                try:
                    out[bname][name] = size_of(name, backbone, spec, cache_dir, seed, Path(tmp), overrides)
                except Exception as e:  # noqa: BLE001 (one broken method must not hide the others' sizes)
                    out[bname][name] = unavailable(error_reason(e))
    return out
