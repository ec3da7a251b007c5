"""``recast-bench perf``: the quick run writes every figure (finite or an explicit reason), and its parts are right."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from recast_bench.cli import main
from recast_bench.perf.common import PeakRSS, interleaved, is_unavailable, non_finite_fields, unavailable
from recast_bench.perf.report import check_targets

SECTIONS = ("machine", "config", "mimicry", "train_step", "inference", "task_switch", "sizes", "data_loading", "gpu")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``perf --quick`` run through the CLI (one thread, as the test suite runs): ``(rc, out dir, perf.json)``."""
    out = tmp_path_factory.mktemp("perf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["perf", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return rc, out, json.loads((out / "perf.json").read_text())


def test_quick_run_writes_every_field_finite(quick):
    rc, out, res = quick
    assert rc == 0
    assert set(SECTIONS) <= set(res)
    assert non_finite_fields(res) == []
    assert "non_finite_fields" not in res  # nothing had to be replaced after the fact
    md = (out / "perf.md").read_text()
    assert "## Targets" in md
    for t in res["targets"]:
        assert t["figure"] in md
    # the GPU input path's figures are shown beside the float CPU path's, with the six datasets' cache size
    ratio = res["data_loading"]["uint8_over_float"]
    assert "uint8 device img/s" in md and f"| {ratio:.4g} |" in md and "Image cache for the six datasets" in md


def test_quick_run_measures_the_recast_figures(quick):
    """The figures that depend only on RECAST and the engine are numbers, not ``unavailable``."""
    _, _, res = quick
    svd = res["mimicry"]["vit_tiny"]["svd"]
    assert svd["min_cosine"] >= 0.9999 and svd["modules"] == 8  # G=2, n=2 >= 2 members: SVD is exact
    rnd = res["mimicry"]["resnet_tiny"]["random"]
    assert rnd["iters_run"] == rnd["iters_cap"] == 5 and rnd["projected_paper_s"] > 0
    ts = res["train_step"]
    assert ts["median_s"]["recast"] > 0 and ts["ratio"]["recast/finetune"] > 0
    assert ts["task_params"]["recast"] == 4 * 2 * 2 * 2  # blocks * (fc1, fc2) * n * K
    assert ts["task_params"]["finetune"] > 100 * ts["task_params"]["recast"]
    assert res["inference"]["max_abs_logit_diff_before_tuning"] < 1e-3
    assert res["inference"]["ratio_cached"] > 0
    sw = res["task_switch"]
    assert sw["outputs_match"] is True and sw["median_total_ms"] > 0
    rec = res["sizes"]["vit_tiny"]["recast"]
    assert rec["task_params"] == 32 and rec["packed_bytes"] < rec["bytes"]
    assert res["sizes"]["resnet_tiny"]["recast"]["task_params"] > 0
    assert len(res["targets"]) == 7 and all(isinstance(t["pass"], bool) for t in res["targets"])


def test_every_registered_method_has_a_size_entry(quick):
    from recast_bench.registry import METHODS, load_all

    load_all()
    _, _, res = quick
    for backbone in ("vit_tiny", "resnet_tiny"):
        assert set(res["sizes"][backbone]) == set(METHODS.names())
        for name, entry in res["sizes"][backbone].items():
            assert isinstance(entry, dict) or is_unavailable(entry), name


def test_non_finite_fields_names_every_bad_value():
    res = {"a": 1.0, "b": [2, float("nan")], "c": {"d": None, "e": unavailable("why"), "f": math.inf}, "g": True}
    assert non_finite_fields(res) == ["b[1]", "c.d", "c.f"]


def test_interleaved_rotates_and_samples():
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    samples = interleaved(fns, warmup=1, repeats=3, min_sample_s=0.0)
    assert {n: len(s) for n, s in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotating rounds


def test_targets_pass_fail_and_unavailable():
    res = {
        "mimicry": {"v": {"svd": {"min_cosine": 0.99995, "seconds": 12.0}}, "r": unavailable("no resnet")},
        "train_step": {"ratio": {"recast/finetune": 1.06}},
        "inference": {"ratio_cached": 0.98},
        "task_switch": {"median_total_ms": 3.0},
        "sizes": {"v": {"recast": {"bytes": 2000}}},
    }
    passes = [t["pass"] for t in check_targets(res, "v", "r")]
    assert passes[:2] == [True, False]  # cosine ok, 12 s > 10 s
    assert is_unavailable(passes[2])  # the ResNet figure is missing: said so, not passed
    assert passes[3:] == [False, True, True, False]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS needs /proc")
def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as mem:
        x = torch.ones(64, 2**20 // 4)  # 64 MiB, touched
        del x
    assert mem.mb is not None and mem.mb >= 48


def test_perf_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(["perf", "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
