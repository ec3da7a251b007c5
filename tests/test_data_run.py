"""``recast-bench run --stream six`` end to end over the fake six-dataset root (real loaders, cache, engine)."""

from __future__ import annotations

import json

import pytest

from recast_bench.cli import main
from recast_bench.config import CONF_DIR

METHODS = [
    ("linear", []),
    pytest.param(
        "recast",
        ["method.recast.mimic_iters=20", "method.recast.groups=2"],
        marks=pytest.mark.skipif(not (CONF_DIR / "method/recast.yaml").is_file(), reason="recast not landed"),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", METHODS)
def test_run_six_stream_over_fixture_root(six_root, tmp_path, method, extra):
    out = tmp_path / "run"
    argv = ["run", "--method", method, "--backbone", "vit_tiny", "--stream", "six", "--out", str(out),
            f"stream.root={six_root}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer=tiny",
            "trainer.epochs=1", "backbone.allow_random_init=true", "logger=none", *extra]  # fmt: skip
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"] == ["flowers102", "aircraft", "mit67", "cifar100", "cifar10", "cub200"]
    acc = res["acc_matrix"]
    assert len(acc) == 6 and all(len(row) == 6 for row in acc)
    assert all(acc[i][j] is not None for i in range(6) for j in range(i + 1))
    assert all(acc[i][j] is None for i in range(6) for j in range(i + 1, 6))
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 14  # every split went through the cache
