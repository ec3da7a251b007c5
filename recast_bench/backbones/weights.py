"""Safe loading of local weight files: safetensors, or third-party .pth/.bin with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from recast_bench.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict without ever unpickling arbitrary objects.

    ``.pth`` files from torchvision/timm are plain state dicts (sometimes nested under ``state_dict``/``model``);
    anything else (a pickled class, code) is refused by ``weights_only=True`` and reported as a corrupt file.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {p} not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot load weights {p}: not a safe state dict ({type(e).__name__})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"weights file {p} does not hold a state dict of tensors")
    return sd


def find_default_weights(weights_dir: str | Path, name: str) -> Path | None:
    """``<weights_dir>/<name>.<suffix>`` for the first suffix that exists."""
    for suf in WEIGHT_SUFFIXES:
        cand = Path(weights_dir) / f"{name}{suf}"
        if cand.is_file():
            return cand
    return None


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, ignore_prefixes: tuple = ()) -> None:
    """Load ``sd`` strictly except for classifier keys; architecture mismatches become a UserError."""
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(ignore_prefixes)]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"shape of {wrong[0]!r}: file {tuple(sd[wrong[0]].shape)} vs model {tuple(own[wrong[0]].shape)}"
            if wrong
            else f"missing {missing[:1]}, unexpected {unexpected[:1]}"
        )
        raise UserError(f"weights {source} do not fit this architecture ({detail})")
    model.load_state_dict(sd, strict=False)
