"""``recast-bench export``: one task of a finished run as a model that loads without recast-bench.

Two formats, chosen per run:

* ``state_dict``: the merged backbone plus the task's head as one ``model.safetensors`` that a stock timm or
  torchvision constructor (named with its keyword arguments in ``model.json``) loads strictly. Used when every
  adapter folds exactly into the stock layers (:mod:`recast_bench.deploy.merge`).
* ``torch.export``: a self-contained ``model.pt2`` program (``torch.export.load(path).module()``) for methods that add
  computation the stock architecture lacks (AdaptFormer, CLR, HAT gates and their recast+ forms) or for backbones
  with no stock constructor (``resnet_tiny``). Foldable layers are merged first, so the program is plain too.

Either way the export is checked before it is written: its logits on the task's own test images must match the
run's model with the task state restored within ``TOLERANCE``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recast_bench.deploy.arch import architecture, build_plain, classifier_prefix, snippet
from recast_bench.deploy.merge import leftover, merged_copy
from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.deploy.run import LoadedRun

TOLERANCE = 1e-4
"""Largest absolute logit difference accepted between the export and the run's own model (float32 rounding of the
folded weights; in practice the state-dict exports agree to ~1e-6)."""
WEIGHTS_FILE, PROGRAM_FILE, META_FILE, README_FILE = "model.safetensors", "model.pt2", "model.json", "README.txt"


class TaskNet(nn.Module):
    """Backbone and one head: ``images -> logits`` (what a torch.export program holds)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")


def _sample_inputs(run: LoadedRun, index: int, n: int = 4) -> torch.Tensor:
    test = run.tasks_data[index].test
    return torch.stack([test[i][0] for i in range(min(n, len(test)))]).float()


def _preprocessing(run: LoadedRun, index: int) -> dict[str, Any]:
    from recast_bench.data.transforms import resize_size

    info = run.tasks[index]
    size = run.image_size
    return {
        "input": f"float32 RGB tensor [B, 3, {size}, {size}]",
        "resize_shorter_side": resize_size(size),
        "resize_interpolation": "bilinear, antialias",
        "center_crop": size,
        "scale": "divide uint8 pixels by 255",
        "mean": list(info.mean),
        "std": list(info.std),
    }


def export_task(run: LoadedRun, task: str, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write task ``task`` of ``run`` to directory ``out``; returns the ``model.json`` contents.

    Nothing at ``out`` is touched unless the whole export succeeds (it is written beside and renamed into place).
    """
    from recast_bench.engine.model import head_key

    out = Path(out)
    info = run.task(task)
    check_out_dir(out, force)
    run.activate(task)
    backbone = merged_copy(run.model.backbone)  # every layer that owns a merge folds itself (engine/fold.py)
    head = copy.deepcopy(run.model.heads[head_key(info.index)]).eval()
    arch = architecture(run.backbone_name, info.num_classes)
    x = _sample_inputs(run, info.index)
    with torch.no_grad():
        expected = run.logits(x, task)
    meta = _meta(run, info)
    plain, reason = _stock_model(run, backbone, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if plain is not None:
            got = _write_state_dict(run, plain, arch or {}, TaskNet(backbone, head), x, staging, meta)
        else:
            got = _write_program(TaskNet(backbone, head).eval(), x, staging, meta, (arch, reason))
        diff = float((got - expected).abs().max())
        if not diff <= TOLERANCE:
            raise RuntimeError(f"export of {info.name} differs from the run's model by {diff:.3g} (> {TOLERANCE})")
        meta["check"] = {"max_abs_logit_diff": diff, "tolerance": TOLERANCE, "images": int(x.shape[0])}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (staging / README_FILE).write_text(readme(meta))
        os.chmod(staging, 0o755)
        _replace_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return meta


def _meta(run: LoadedRun, info: Any) -> dict[str, Any]:  # noqa: ANN401 (the run's task info)
    return {
        "task": info.name,
        "task_index": info.index,
        "method": run.method_name,
        "backbone": run.backbone_name,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "preprocessing": _preprocessing(run, info.index),
        "run": str(run.dir),
        "fingerprint": run.results.get("fingerprint"),
    }


def _stock_model(run: LoadedRun, backbone: nn.Module, arch: dict | None) -> tuple[nn.Module | None, str | None]:
    """The stock constructor's model when the merged ``backbone`` is plain; else ``None`` and why a program."""
    if arch is None:
        reason = f"backbone {run.backbone_name} has no stock timm/torchvision constructor"
        from recast_bench.backbones import get_spec

        extra = leftover(backbone, get_spec(run.backbone_name).build())  # against the unadapted architecture
        if extra:
            reason += f", and {', '.join(extra)} (extra computation that does not fold into plain layers)"
        return None, reason
    plain = build_plain(arch).eval()
    left = leftover(backbone, plain)
    if left:
        return None, f"{', '.join(left)} (extra computation that does not fold into the stock layers)"
    return plain, None


def _write_state_dict(
    run: LoadedRun, plain: nn.Module, arch: dict, net: TaskNet, x: torch.Tensor, staging: Path, meta: dict
) -> torch.Tensor:
    """``model.safetensors`` that ``plain`` (the stock model) loads strictly; its logits on ``x``."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in net.backbone.state_dict().items()}
    prefix = classifier_prefix(arch)
    state.update({prefix + k: v.detach().clone().contiguous() for k, v in net.head.state_dict().items()})
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"merged {run.method_name} state does not fit {arch['constructor']}: {e}") from e
    with torch.no_grad():
        got = plain(x)
    save_file(state, str(staging / WEIGHTS_FILE), metadata={"task": meta["task"], "format": "state_dict"})
    meta |= {"format": "state_dict", "weights": WEIGHTS_FILE, "architecture": arch}
    meta["load"] = snippet(arch, WEIGHTS_FILE, META_FILE)
    return got


def _write_program(
    net: TaskNet, x: torch.Tensor, staging: Path, meta: dict, why: tuple[dict | None, str | None]
) -> torch.Tensor:
    """``model.pt2``, a torch.export program of ``net``; the reloaded program's logits on ``x``. ``why``: the stock
    architecture (if any) and why it could not be used."""
    arch, reason = why
    torch.export.save(export_program(net, x), str(staging / PROGRAM_FILE))
    with torch.no_grad():
        got = torch.export.load(str(staging / PROGRAM_FILE)).module()(x)
    meta |= {"format": "torch.export", "program": PROGRAM_FILE, "architecture": arch, "why_program": reason}
    meta["load"] = (
        "import torch\n"
        f'model = torch.export.load("{PROGRAM_FILE}").module()\n'
        f"logits = model(images)  # images: {meta['preprocessing']['input']}\n"
    )
    return got


def export_program(net: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """A torch.export program with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = example if example.shape[0] > 1 else example.repeat(2, 1, 1, 1)  # batch 1 would be specialised
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` (``--force``) is removed only after the new one is in place."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def readme(meta: dict[str, Any]) -> str:
    what = (
        f"a {meta['architecture']['library']} {meta['architecture']['constructor']} state dict with the task "
        "merged in (model.safetensors)"
        if meta["format"] == "state_dict"
        else f"a torch.export program (model.pt2): {meta['why_program']}"
    )
    pre = meta["preprocessing"]
    return (
        f"Task {meta['task']!r} of a recast-bench run ({meta['method']} on {meta['backbone']}): {what}.\n"
        f"{meta['num_classes']} classes, names in model.json (class_names). No recast-bench needed to load it:\n\n"
        f"{meta['load']}\n"
        f"Inputs: RGB images, shorter side resized to {pre['resize_shorter_side']} (bilinear, antialias), "
        f"center-cropped to {pre['center_crop']}, scaled to [0, 1], normalised with mean {pre['mean']} and std "
        f"{pre['std']}.\n"
        f"Checked on export: logits match the run's own model within {meta['check']['tolerance']} "
        f"(max difference {meta['check']['max_abs_logit_diff']:.2g}).\n"
    )
