"""``recast-bench report``: tables equal the runs' numbers with the paper's beside them, figures exist, W&B offline,
and ``mk/bench.mk`` expands into one run per method x seed."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from recast_bench.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "backbone=vit_tiny",
    "stream=synthetic",
    "trainer=tiny",
    "trainer.epochs=1",
    "trainer.batch_size=8",
    "++stream.num_tasks=2",
    "++stream.classes_per_task=[2,3]",
    "++stream.train_per_class=4",
    "++stream.val_per_class=2",
    "++stream.test_per_class=4",
    "logger=none",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two methods x two seeds of real tiny runs, plus one real ``mimic`` report."""
    from recast_bench.config import compose_config
    from recast_bench.engine.loop import run
    from recast_bench.recast.mimicry import MimicConfig
    from recast_bench.recast.pipeline import MimicJob, run_mimic
    from recast_bench.recast.surgery import RecastSpec

    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("linear", "finetune"):
        for seed in (1, 2):
            out = base / f"{method}-s{seed}"
            cfg = compose_config([f"method=[{method}]", f"method_name={method}", f"seed={seed}", f"out={out}", *TINY])
            runs[(method, seed)] = run(cfg, echo=False)
    mimic = base / "mimic"
    run_mimic(
        MimicJob(
            backbone="vit_tiny",
            out=str(mimic),
            spec=RecastSpec(groups=2),
            mimic=MimicConfig(iters=5),
            cache_dir=None,
            plots=False,
            batch_size=2,
        )
    )
    return base, runs, mimic


def runs_of(runs: dict) -> set[str]:
    return {m for m, _ in runs}


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_report_tables_match_runs_and_show_paper(inputs, tmp_path, capsys):
    base, runs, mimic = inputs
    out = tmp_path / "report"
    assert cli_main(["report", str(base / "*-s*"), str(mimic), "--out", str(out)]) == 0
    assert "Table 2 (ViT-S)" in capsys.readouterr().out  # the terminal summary

    t2 = _csv(out / "tables" / "table2_vit_tiny_synthetic.csv")
    for method in ("linear", "finetune"):
        accs = [runs[(method, s)]["avg_acc"] for s in (1, 2)]
        row = t2[method]
        assert row["seeds"] == "2"
        assert float(row["acc"]) == pytest.approx(statistics.fmean(accs), abs=1e-9)
        assert float(row["acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
        params = max(p for s in (1, 2) for p in runs[(method, s)]["trainable_params_per_task"])
        assert int(row["params_per_task"]) == params
        bb = runs[(method, 1)]["backbone_params"]
        assert float(row["params_fraction"]) == pytest.approx(params / bb)
        assert int(row["bytes_per_task"]) == max(b for s in (1, 2) for b in runs[(method, s)]["bytes_per_task"])
    assert int(t2["finetune"]["params_per_task"]) > 0 == int(t2["linear"]["params_per_task"])
    # Two seeds: a t interval with 1 degree of freedom, t(0.975, 1) = 12.7062 (tables).
    accs = [runs[("finetune", s)]["avg_acc"] for s in (1, 2)]
    half = 12.7062 * statistics.stdev(accs) / 2**0.5
    assert float(t2["finetune"]["acc_hi"]) == pytest.approx(statistics.fmean(accs) + half, rel=1e-5)
    metrics = _csv(out / "tables" / "metrics_vit_tiny_synthetic.csv")
    fgt = [r["acc_matrix"][0][0] - r["acc_matrix"][1][0] for r in (runs[("finetune", s)] for s in (1, 2))]
    assert float(metrics["finetune"]["forgetting"]) == pytest.approx(statistics.fmean(fgt))  # two tasks: R00 - R10
    with (out / "tables" / "tests_vit_tiny_synthetic.csv").open() as f:
        tests = {(r["method"], r["test"]): r for r in csv.DictReader(f)}
    paired = tests[("finetune", "paired t over seeds")]
    lin = [runs[("linear", s)]["avg_acc"] for s in (1, 2)]
    assert float(paired["diff"]) == pytest.approx(statistics.fmean(accs) - statistics.fmean(lin))
    has_predictions = all(
        (base / f"{m}-s{s}" / "predictions.safetensors").is_file() for m in runs_of(runs) for s in (1, 2)
    )
    image_test = tests[("finetune", "paired bootstrap over images")]
    assert (image_test["verdict"] != "n/a") == has_predictions  # made exactly when the engine wrote predictions
    # The paper's column sits beside ours, with the difference.
    assert float(t2["linear"]["paper_acc"]) == 82.4
    assert float(t2["linear"]["acc_diff"]) == pytest.approx(float(t2["linear"]["acc"]) - 82.4)
    assert t2["finetune"]["paper_acc"] == ""  # not in the paper
    assert float(t2["recast"]["paper_acc"]) == 85.0 and t2["recast"]["seeds"] == "0"
    assert float(t2["rosa[full]"]["paper_acc"]) == 88.6
    md = (out / "tables" / "table2_vit_tiny_synthetic.md").read_text()
    assert "paper_acc" in md and "82.40" in md

    t4 = _csv(out / "tables" / "table4_vit_tiny_synthetic.csv")
    tasks = runs[("linear", 1)]["tasks"]
    for j, task in enumerate(tasks):
        mean = statistics.fmean(runs[("finetune", s)]["final_acc"][j] for s in (1, 2))
        assert float(t4["finetune"][task]) == pytest.approx(mean, abs=1e-9)
        assert f"{task}_paper" in t4["finetune"]

    report = json.loads((mimic / "report.json").read_text())
    with (out / "tables" / "table6_reconstruction.csv").open() as f:
        t6 = list(csv.DictReader(f))
    assert float(t6[0]["feature_similarity"]) == pytest.approx(100 * report["outputs"]["feature_cosine_mean"])
    assert float(t6[0]["weight_cos_min"]) == pytest.approx(report["weight_cosine"]["min"])
    with (out / "tables" / "table5_mimicry.csv").open() as f:
        t5 = list(csv.DictReader(f))
    assert float(t5[0]["seconds"]) == pytest.approx(report["seconds"]["mimicry"])

    figs = out / "figures"
    expected = [
        "figure3_vit_tiny_synthetic.png",
        "figure4_synthetic.png",
        "figure5_reconstruction.png",
        "figure7_diversity.png",
        "figure8_coef_similarity.png",
    ]
    expected += [f"heatmaps/{m}-vit_tiny-synthetic-s{s}.png" for m in ("linear", "finetune") for s in (1, 2)]
    expected += ["front_vit_tiny_synthetic.png", "curves_vit_tiny_synthetic.png"]
    for name in expected:
        assert (figs / name).stat().st_size > 1000, name
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (out / "README.md").read_text()
    assert "Figure 6 (G/n/K scaling)" in readme.split("## Skipped")[1]  # no G/n/K runs: skipped with the reason
    assert "figures/figure3_vit_tiny_synthetic.png" in readme


def test_report_separates_settings_and_plots_gnk(inputs, tmp_path):
    """Recast runs that differ in G (a sweep) form separate rows, and Figure 6 is drawn from them."""
    base, runs, _ = inputs
    sweep = tmp_path / "sweep"
    for groups, params in ((1, 8), (2, 16)):
        for seed in (1, 2):
            res = json.loads((base / f"linear-s{seed}" / "results.json").read_text())
            res["method"] = "recast"
            res["config"]["method"] = {"recast": {"groups": groups, "target": "mlp"}}
            res["trainable_params_per_task"] = [params] * len(res["tasks"])
            (sweep / f"G{groups}-s{seed}").mkdir(parents=True)
            (sweep / f"G{groups}-s{seed}" / "results.json").write_text(json.dumps(res))
    out = tmp_path / "report"
    assert cli_main(["report", str(sweep), "--out", str(out), "--quiet"]) == 0
    t2 = _csv(out / "tables" / "table2_vit_tiny_synthetic.csv")
    assert t2["recast{groups=1}"]["seeds"] == "2" and t2["recast{groups=2}"]["params_per_task"] == "16"
    assert float(t2["recast{groups=1}"]["paper_acc"]) == 85.0
    assert (out / "figures" / "figure6_vit_tiny_synthetic.png").stat().st_size > 1000


def test_report_wandb_offline(inputs, tmp_path, monkeypatch):
    base, _, _ = inputs
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = tmp_path / "report"
    assert cli_main(["report", str(base / "linear-s1"), "--out", str(out), "--wandb", "--quiet"]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "no offline W&B run written"


def test_report_reads_perf_mimicry(tmp_path):
    """Table 5 from a ``perf.json`` alone (CPU and GPU sections), with the paper's seconds beside ours."""
    perf = {
        "mimicry": {"vit_tiny": {"svd": {"seconds": 1.5, "peak_rss_mb": 900.0, "iters_run": 3}, "random": "n/a"}},
        "gpu": {"device": "H200", "mimicry": {"vit_small/svd": {"seconds": 2.0, "peak_cuda_gb": 0.5}}},
    }
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "perf.json").write_text(json.dumps(perf))
    out = tmp_path / "report"
    assert cli_main(["report", str(tmp_path / "perf"), "--out", str(out), "--quiet"]) == 0
    with (out / "tables" / "table5_mimicry.csv").open() as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    assert float(rows["vit_tiny"]["seconds"]) == 1.5 and rows["vit_tiny"]["paper_seconds"] == ""
    assert float(rows["vit_small"]["memory_mb"]) == 512.0 and rows["vit_small"]["device"] == "H200"
    assert float(rows["vit_small"]["seconds_diff"]) == pytest.approx(2.0 - 37.4)
    assert "Tables 1, 2 and 4" in (out / "README.md").read_text()  # no runs: skipped, with the reason


def test_report_user_errors(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nope-*"), "--out", str(tmp_path / "r")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"method": "linear"}))
    assert cli_main(["report", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "results lack" in capsys.readouterr().err


def test_backfill_predictions_from_stored_task_states(inputs, tmp_path, capsys):
    """Old runs get predictions from their task states when the engine records them, or one clear line."""
    from recast_bench.report.predictions import load_predictions
    from recast_bench.report.predictions import main as backfill_main

    base, runs, _ = inputs
    run = tmp_path / "run"
    shutil.copytree(base / "linear-s1", run)
    (run / "predictions.safetensors").unlink(missing_ok=True)
    rc = backfill_main([str(run)])
    if rc == 2:  # this checkout's learner keeps no per-image predictions: say so, write nothing
        assert "learner.last_predictions" in capsys.readouterr().err
        assert not (run / "predictions.safetensors").exists()
        return
    assert rc == 0
    p = load_predictions(run)
    for j, task in enumerate(runs[("linear", 1)]["tasks"]):
        assert 100.0 * p.right(task).mean() == pytest.approx(runs[("linear", 1)]["final_acc"][j])
    assert backfill_main([str(run)]) == 2  # exists: not overwritten without --force


def test_progress_counts_runs(inputs, capsys):
    from recast_bench.report.progress import main

    base, _, _ = inputs
    assert main([str(base), "--expect", "linear-s1 finetune-s1 missing-s1", "--next", "missing-s1", "--grid"]) == 0
    out = capsys.readouterr().out
    assert "2/3 runs complete, 4/6 tasks" in out and "run 3/3: missing-s1 (starting)" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_bench_mk_expands_methods_seeds_and_variants(tmp_path):
    top = tmp_path / "Makefile"
    top.write_text(f"VENV := .venv\nPY := $(VENV)/bin/python\nBIN := $(VENV)/bin\ninclude {ROOT}/mk/bench.mk\n")
    args = ["BACKBONE=vit_small", "STREAM=synthetic", "TINY=1", "SEEDS=1 2", "BENCH_RUN_METHODS=linear rosa@full"]
    cmd = ["make", "-n", "-f", str(top), "_bench-run", "_bench-report", *args, f"BENCH_ROOT={tmp_path}/bench"]
    text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    runs = [ln for ln in text.splitlines() if "recast-bench run " in ln]
    assert len(runs) == 4
    assert any("--method rosa " in ln and "method.rosa.variant=full" in ln and "/rosa@full-s2" in ln for ln in runs)
    assert all("++backbone.allow_random_init=true" in ln for ln in runs)
    assert "recast-bench report" in text and f"{tmp_path}/bench/vit_small-synthetic/report" in text
