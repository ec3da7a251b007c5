"""RECAST artifacts (templates + coefficients as safetensors, plan and settings as JSON) and the mimicry cache.

One format serves both: ``recast.safetensors`` holds ``templates/<bank>`` and ``coefficients/<module>``;
``recast.json`` holds the plan (banks, shapes, member modules), the spec and the mimicry settings. The cache stores
the same pair under ``<cache_dir>/recast_mimicry/<sha256>``, keyed by the bytes of the pretrained target weights
(all the mimicry reads from the backbone) plus the plan and the result-changing mimicry settings. Hashing the
tensors rather than the file means a re-saved or renamed file with the same weights still hits the cache, and an
edited one never does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from recast_bench.engine.checkpoint import save_tensors, write_json
from recast_bench.errors import UserError
from recast_bench.recast.mimicry import MimicConfig, MimicResult, neural_mimicry
from recast_bench.recast.surgery import RecastPlan

FORMAT_VERSION = 1
ALGORITHM_VERSION = 2
"""Bumped whenever Neural Mimicry computes something else for the same settings (2: the authors' per-set init, qkv
fan_out, VAE as in their notebook, scaled SVD), so older cache entries are never reused."""
TENSORS = "recast.safetensors"
CONFIG = "recast.json"


def save_recast(
    out_dir: str | Path,
    plan: RecastPlan,
    templates: dict[str, torch.Tensor],
    coefficients: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/recast.safetensors`` and ``out_dir/recast.json`` (atomically: temp file, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"templates/{k}": v for k, v in templates.items()}
    tensors |= {f"coefficients/{k}": v for k, v in coefficients.items()}
    meta = {"format": "recast-bench", "version": FORMAT_VERSION, "plan": plan.to_dict(), **(extra or {})}
    save_tensors(out / TENSORS, tensors)
    write_json(out / CONFIG, meta)
    return out


def load_recast(path: str | Path) -> tuple[RecastPlan, dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Read an artifact directory; returns ``(plan, templates, coefficients, meta)``. Bad files raise UserError."""
    d = Path(path)
    if not (d / TENSORS).is_file() or not (d / CONFIG).is_file():
        raise UserError(f"{d} is not a RECAST artifact (needs {TENSORS} and {CONFIG})")
    try:
        meta = json.loads((d / CONFIG).read_text())
        plan = RecastPlan.from_dict(meta["plan"])
        tensors = load_file(str(d / TENSORS))
    except Exception as e:
        raise UserError(f"cannot read RECAST artifact {d}: {type(e).__name__}: {e}") from None
    templates = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("templates/")}
    coefficients = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("coefficients/")}
    missing = [b.key for b in plan.banks if b.key not in templates] + [
        m for m in plan.modules() if m not in coefficients
    ]
    if missing:
        raise UserError(f"RECAST artifact {d} is incomplete (missing {missing[0]!r})")
    return plan, templates, coefficients, meta


def cache_key(targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig) -> str:
    """sha256 of the target weights' names, shapes, dtypes and bytes, plus the plan and the mimicry settings."""
    h = hashlib.sha256()
    for name in sorted(targets):
        t = targets[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    settings = {
        "v": FORMAT_VERSION,
        "algorithm": ALGORITHM_VERSION,
        "plan": plan.to_dict(),
        "mimic": cfg.resolved(plan.family).cache_dict(),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def mimic_cached(
    targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig, cache_dir: str | Path | None
) -> tuple[MimicResult, str]:
    """:func:`neural_mimicry`, reusing ``cache_dir/recast_mimicry/<key>`` when present. Returns (result, key)."""
    key = cache_key(targets, plan, cfg)
    entry = Path(cache_dir) / "recast_mimicry" / key if cache_dir else None
    if entry is not None and (entry / TENSORS).is_file():
        try:
            _, templates, coefficients, meta = load_recast(entry)
        except UserError:
            pass  # a corrupt entry is recomputed and overwritten
        else:
            m = meta.get("mimicry", {})
            return MimicResult(templates, coefficients, m.get("history", []), m.get("iters_run", 0), 0.0, True), key
    result = neural_mimicry(targets, plan, cfg)
    if entry is not None:
        info = {"history": result.history, "iters_run": result.iters_run, "seconds": result.seconds}
        save_recast(entry, plan, result.templates, result.coefficients, {"mimicry": info, "key": key})
    return result, key
