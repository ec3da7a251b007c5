"""A built wheel works outside the checkout: configs and packaged data ship, and it runs from any directory.

The wheel is built offline from a copy of the project's files, installed (without network, without its
dependencies) into a fresh virtualenv that reuses this interpreter's installed dependencies through a ``.pth``
line, and run from an empty directory with no PYTHONPATH: ``recast-bench list`` and a tiny run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--method", "linear", "--backbone", "vit_tiny", "--stream", "synthetic", "logger=none", "trainer=tiny",
    "trainer.epochs=1", "trainer.batch_size=8", "stream.num_tasks=2", "stream.classes_per_task=[2,3]",
    "stream.train_per_class=4", "stream.val_per_class=2", "stream.test_per_class=2", "trainer.progress_bar=false",
]  # fmt: skip


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("recast_bench", "baselines", "conf"):
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)  # recast_bench/conf stays a link
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, text=True)  # fmt: skip
    return next((tmp / "dist").glob("recast_bench-*.whl"))


@pytest.mark.slow
def test_wheel_installs_and_runs_from_any_directory(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", str(py), "install",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True)  # fmt: skip
    # Only now the dependencies: pip never sees this interpreter's packages (nor its editable recast-bench).
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RECAST_BENCH_CONF")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.check_output([str(py), "-c", "import recast_bench; print(recast_bench.__file__)"], cwd=work,
                                    env=env, text=True)  # fmt: skip
    assert where.startswith(str(site)), f"recast_bench imported from {where}, not from the wheel"

    exe = str(venv / "bin" / "recast-bench")
    listing = subprocess.run([exe, "list"], cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    rows = {line.split(":")[0]: line.split(":", 1)[1].split() for line in listing.splitlines() if ":" in line}
    assert {"six", "synthetic", "six_pooled"} <= set(rows["streams"])
    assert {"vit_tiny", "resnet34", "vit_small"} <= set(rows["backbones"])
    assert {"recast", "linear", "lora", "recast+adaptformer"} <= set(rows["methods"])

    out = work / "runs" / "tiny"
    run = subprocess.run([exe, "run", *TINY, "--out", str(out)], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and len(res["tasks"]) == 2
    assert res["config"]["protocol"]["card"] == "linear", "the protocol cards ship in the wheel"
