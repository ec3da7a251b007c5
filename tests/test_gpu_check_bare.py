"""``make gpu-check`` on a bare CUDA machine: the Python it picks, one line for a missing package, Lightning cases
that run without wandb and avalanche, and a GPU that nvidia-smi lists but torch cannot use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recast_bench.gpucheck.runner import main

ROOT = Path(__file__).resolve().parents[1]
HIDE = Path(__file__).parent / "fixtures" / "hide_packages"


def _hiding(*names: str) -> dict[str, str]:
    """An environment in which ``names`` cannot be imported (tests/fixtures/hide_packages/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(HIDE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "RECAST_BENCH_HIDE": ",".join(names)}


def test_a_missing_package_is_one_line_naming_it_and_its_install(tmp_path):
    env = _hiding("hydra", "omegaconf")
    for argv in (["recast_bench.gpucheck.stack"], ["recast_bench.gpucheck", "--out", str(tmp_path / "gc.json")]):
        # the check itself says it before importing torch
        out = subprocess.run([sys.executable, "-m", *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert "lacks hydra-core, omegaconf" in lines[0] and "pip install 'hydra-core>=1.3.2,<1.4'" in lines[0]
    assert not (tmp_path / "gc.json").exists()
    ok = subprocess.run(
        [sys.executable, "-m", "recast_bench.gpucheck.stack"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert ok.returncode == 0 and not ok.stderr


def _fake_python(path: Path, has_torch: bool) -> Path:
    """A stand-in interpreter that answers the stack probe and records every other command line."""
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$*" = "-m recast_bench.gpucheck.stack --has torch" ]; then exit {0 if has_torch else 1}; fi\n'
        f'echo "$0 $*" >> "{path}.calls"\n'
    )
    path.chmod(0o755)
    return path


def test_make_gpu_check_uses_the_python_on_path_and_builds_no_virtualenv(tmp_path):
    venv = tmp_path / "venv"  # no virtualenv here
    image = _fake_python(tmp_path / "python3", has_torch=True)
    out = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PYTHON={image}", f"VENV={venv}",
                          "GPU_CHECK_ARGS=--only x"], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(f"{image}.calls").read_text().split()[1:] == [
        "-m", "recast_bench.gpucheck", "--out", "gpu-check.json", "--only", "x"
    ]  # fmt: skip
    assert not venv.exists()
    # with this checkout's virtualenv installed, that one is used instead
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    own = _fake_python(venv / "bin" / "python", has_torch=True)
    out = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PYTHON={image}", f"VENV={venv}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and Path(f"{own}.calls").read_text().split()[1:3] == ["-m", "recast_bench.gpucheck"]


@pytest.mark.slow
def test_isolated_lightning_cases_run_without_wandb_and_avalanche(tmp_path, monkeypatch, capsys):
    """The issue's reproduction: with both unimportable, a Lightning case passes in its own process, and an Avalanche
    case fails as a case naming the package (the check itself carries on and reports)."""
    for k, v in _hiding("wandb", "avalanche").items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "gc.json"
    only = ["default/vit_tiny/linear", "default/resnet_tiny/ewc"]
    rc = main(["--cpu-form", "--isolate", "yes", "--lanes", "2", "--no-ceiling", "--only", *only,
               "--out", str(out), "--work", str(tmp_path / "w")])  # fmt: skip
    printed = capsys.readouterr().out
    rows = {r["case"]: r for r in json.loads(out.read_text())["cases"]}
    assert rc == 1 and set(rows) == set(only)
    lin, ewc = rows["default/vit_tiny/linear"], rows["default/resnet_tiny/ewc"]
    assert lin["status"] == "pass" and lin["tasks_done"] == 2 and lin["eval_devices"] == ["cpu"], lin
    assert ewc["status"] == "fail" and ewc["failure_class"] == "missing_package" and ewc["exit_code"] == 2
    assert "avalanche" in ewc["error"] and "Traceback" not in ewc["error"]
    assert "default/resnet_tiny/ewc: fail (missing_package" in printed and "1 passed, 1 failed" in printed


def test_a_gpu_that_torch_cannot_use_stops_the_check_in_one_line(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine where torch cannot use CUDA")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "gc.json"
    assert main(["--cpu-form", "--no-ceiling", "--out", str(out), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nvidia-smi lists 1 GPU(s) (NVIDIA H100 80GB HBM3) but torch" in err[0], err
    assert "cannot use them" in err[0] and not out.exists()  # never a CPU-form pass
