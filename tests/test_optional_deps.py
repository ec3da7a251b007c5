"""Optional packages are imported only where they are used: avalanche-lib only for the Avalanche methods, wandb only
for ``logger=wandb``. Checked in a subprocess where both are made unimportable (tests/fixtures/hide_packages/), as on
the GPU machine, which has neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_STREAM, TINY_TRAINER

ROOT = Path(__file__).resolve().parents[1]
HIDE = Path(__file__).parent / "fixtures" / "hide_packages"
"""Its ``sitecustomize.py`` refuses the packages named in ``$RECAST_BENCH_HIDE`` as if they were not installed."""

DRIVER = """
import contextlib, io, json, sys
from recast_bench.cli import main
from recast_bench.protocol.__main__ import main as protocol
out = {}
for key, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as so:
        rc = protocol(argv[1:]) if argv[0] == "protocol" else main(argv)
    out[key] = {"rc": rc, "stderr": err.getvalue(), "stdout": so.getvalue()}
for name in ("avalanche", "wandb"):
    try:
        __import__(name)
        out["import " + name] = "importable"
    except ModuleNotFoundError:
        out["import " + name] = "blocked"
print(json.dumps(out))
"""


def _run_cmd(method: str, out: Path, data: Path, logger: str = "none") -> list[str]:
    return [
        "run", "--method", method, "--backbone", "vit_tiny", "--stream", "synthetic", "--out", str(out),
        f"paths.data_dir={data}", f"logger={logger}", *TINY_STREAM, *TINY_TRAINER, "trainer.epochs=1",
        "stream.num_tasks=2", "stream.classes_per_task=[3,2]",
    ]  # fmt: skip


def test_lightning_runs_without_avalanche_and_wandb_and_their_users_say_what_to_install(tmp_path) -> None:
    """One subprocess (the CLI's ``main``, as the ``recast-bench`` script calls it), five commands: a whole Lightning
    run succeeds; ``list -v`` and the protocol cards still show the Avalanche methods; an Avalanche run and
    ``logger=wandb`` stop with one line naming the package, exit 2, before their output directory exists."""
    path = os.pathsep.join(p for p in (str(HIDE), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RECAST_BENCH_HIDE": "avalanche,wandb"}
    cases = {
        "linear": _run_cmd("linear", tmp_path / "linear", tmp_path / "data"),
        "list": ["list", "-v"],
        "card": ["protocol", "show", "--backbone", "resnet34", "er-ace"],
        "ewc": _run_cmd("ewc", tmp_path / "ewc", tmp_path / "data"),
        "wandb": _run_cmd("linear", tmp_path / "wandb", tmp_path / "data", logger="wandb"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["import avalanche"] == got["import wandb"] == "blocked"  # the environment really lacks both
    # A Lightning method trains, evaluates and writes its results without either package.
    assert got["linear"]["rc"] == 0, got["linear"]["stderr"][-3000:]
    assert json.loads((tmp_path / "linear" / "results.json").read_text())["status"] == "complete"
    assert "Traceback" not in got["linear"]["stderr"]
    # The registry and `list -v` still know every Avalanche method and its class attributes.
    listing = got["list"]["stdout"]
    assert got["list"]["rc"] == 0
    for name in ("ewc", "lwf", "gdumb", "derpp", "er-ace", "l2p"):
        assert any(line.split()[:1] == [name] and "isolates=False" in line for line in listing.splitlines()), name
    # So do the protocol cards (the card of an Avalanche row, with its values and the per-task count).
    assert got["card"]["rc"] == 0 and "method.er-ace.mem_per_class = 120" in got["card"]["stdout"], got["card"]
    # Running one needs the package: one line naming it, exit 2, before the output directory exists.
    for key, package in (("ewc", "pip install avalanche-lib==0.6.0"), ("wandb", "pip install wandb")):
        lines = got[key]["stderr"].strip().splitlines()
        assert got[key]["rc"] == 2 and len(lines) == 1 and package in lines[0], got[key]
        assert not (tmp_path / key).exists()
