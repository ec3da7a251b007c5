"""Whether a Python has the packages the GPU check needs; standard library only, so it runs before torch is imported.

``python -m recast_bench.gpucheck.stack``: exit 0 when this interpreter has the stack, else one line naming what is
missing and the ``pip install`` that adds it, exit 2. ``--has MODULE``: exit 0/1, silently (the Makefile uses it to
pick a Python). A CUDA image with torch, Lightning and timm preinstalled usually lacks Hydra and OmegaConf (needed by
every case) and avalanche-lib and wandb (needed only by the Avalanche cases, which then fail with their own line).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

REQUIRED = {
    "torch": "torch", "torchvision": "torchvision", "lightning": "lightning", "timm": "timm",
    "torchmetrics": "torchmetrics", "hydra": "hydra-core", "omegaconf": "omegaconf", "safetensors": "safetensors",
    "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml",
}  # fmt: skip
"""Import name -> distribution, for every package a Lightning case imports."""
AVALANCHE = {"avalanche": "avalanche-lib", "wandb": "wandb"}
"""The Avalanche cases also need these (avalanche-lib imports wandb unconditionally)."""

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def has(module: str) -> bool:
    """Whether ``module`` can be found (without importing it; an import hook that refuses it counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: dict[str, str]) -> list[str]:
    """The distributions of ``modules`` (import name -> distribution) that this interpreter lacks."""
    return [dist for mod, dist in modules.items() if not has(mod)]


def _pins() -> dict[str, str]:
    """Distribution -> the requirement pyproject.toml declares for it (empty when the source tree is absent)."""
    try:
        import tomllib

        deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    except (OSError, KeyError, ValueError):
        return {}
    out = {}
    for req in deps:
        name = re.match(r"[A-Za-z0-9_.\-]+", req)
        if name:
            out[re.sub(r"[-_.]+", "-", name.group(0)).lower()] = req.replace(" ", "")
    return out


def install_hint(dists: list[str]) -> str:
    """``pip install 'hydra-core>=1.3.2,<1.4' ...`` with the project's own pins."""
    pins = _pins()
    return "pip install " + " ".join(f"'{pins.get(d, d)}'" for d in dists)


def problem(modules: dict[str, str], what: str) -> str | None:
    """One line saying what ``what`` lacks and how to install it, or ``None`` when nothing is missing."""
    lack = missing(modules)
    if not lack:
        return None
    return f"{sys.executable} lacks {', '.join(lack)}, needed by {what}; install with: {install_hint(lack)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recast_bench.gpucheck.stack", description=__doc__.splitlines()[0])
    p.add_argument("--has", metavar="MODULE", help="exit 0 when MODULE can be imported, else 1 (no output)")
    args = p.parse_args(argv)
    if args.has:
        return 0 if has(args.has) else 1
    line = problem(REQUIRED, "the GPU check")
    if line:
        print(f"gpu-check: error: {line} (or `make install` for a virtualenv)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
