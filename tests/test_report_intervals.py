"""``recast-bench report`` on hand-made runs with predictions: intervals, both paired tests, metrics, the front,
task-agnostic accuracy, and what is skipped (and said) for runs without the newer keys."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from fixtures.results import right_vector, write_run

from recast_bench.cli import main

SEEDS = (42, 1998, 3142592)
N = 50  # test images per task
T975_2 = 4.302653  # Student t, 0.975 quantile, 2 degrees of freedom (tables)
# method -> per seed (right on task 0, right on task 1) after the last task, and its per-task parameters
SETUP = {
    "linear": ([(35, 30), (36, 30), (34, 31)], 0),
    "recast": ([(40, 36), (41, 37), (40, 38)], 96),
    "melo": ([(45, 44), (46, 44), (45, 45)], 768),
    "finetune": ([(30, 47), (31, 48), (29, 47)], 5000),
}


def _rights(method: str, k: int) -> list[np.ndarray]:
    return [right_vector(N, n, offset=3 * k + j) for j, n in enumerate(SETUP[method][0][k])]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    for method, (_, params) in SETUP.items():
        for k, seed in enumerate(SEEDS):
            first = 98.0 if method == "finetune" else 100.0 * SETUP[method][0][k][0] / N  # finetune forgets task 0
            extra = {"task_switch_ms": 2.0 + params / 100, "schema_version": 2, "git_commit": "abc123"}
            if method == "recast":
                extra["task_agnostic"] = {
                    "rule": "max_softmax",
                    "task_id_acc": 90.0 + k,
                    "acc": 70.0 + k,
                    "per_task": {},
                    "after_task": 1,
                }
            write_run(
                root,
                f"{method}-s{seed}",
                method,
                seed,
                [[first, None], [None, None]],
                _rights(method, k),
                params=params,
                **extra,
            )
    # A schema-1 row of three seeds without predictions, and a one-seed row.
    for k, seed in enumerate(SEEDS):
        write_run(root, f"dora-s{seed}", "dora", seed, [[80.0, None], [80.0 + k, 70.0]], params=2000)
    write_run(root, "adaptformer-s42", "adaptformer", 42, [[90.0, None], [90.0, 88.0]], params=580)
    return root


def _rows(path: Path, key: str = "method") -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {r[key]: r for r in csv.DictReader(f)}


def _avg(method: str, k: int) -> float:
    return sum(100.0 * n / N for n in SETUP[method][0][k]) / 2


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "report"
    assert main(["report", str(bench), "--out", str(out), "--quiet"]) == 0
    return out


def test_cells_carry_a_t_interval_and_one_seed_says_so(report):
    t2 = _rows(report / "tables" / "table2_vit_tiny_synthetic.csv")
    accs = [_avg("recast", k) for k in range(3)]
    mean = sum(accs) / 3
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
    assert float(t2["recast"]["acc"]) == pytest.approx(mean)
    assert float(t2["recast"]["acc_hi"]) - mean == pytest.approx(T975_2 * sd / math.sqrt(3), rel=1e-5)
    assert t2["recast"]["paper_vs_ci"] == "outside (paper above)"  # ours ~77.3 +- 1.3, the paper's 85.0
    assert t2["adaptformer"]["acc_lo"] == "" and t2["adaptformer"]["paper_vs_ci"] == "one seed: no interval"
    md = (report / "tables" / "table2_vit_tiny_synthetic.md").read_text()
    assert f"{mean:.2f} ± {T975_2 * sd / math.sqrt(3):.2f}" in md
    assert "89.00 (1 seed)" in md
    assert "| adaptformer | 1 |" in (report / "tables" / "metrics_vit_tiny_synthetic.md").read_text()
    for f in (report / "tables").glob("*.md"):  # one seed never shows a (zero-width) interval
        one_seed = [ln for ln in f.read_text().splitlines() if "| adaptformer |" in ln]
        assert not any("±" in ln for ln in one_seed), f.name


def test_paired_tests_across_seeds_and_over_images(report):
    tests = list(csv.DictReader((report / "tables" / "tests_vit_tiny_synthetic.csv").open()))
    seeds = {(r["method"], r["reference"]): r for r in tests if r["test"] == "paired t over seeds"}
    d = [_avg("melo", k) - _avg("linear", k) for k in range(3)]
    md_, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    t = md_ / (sd / math.sqrt(3))
    row = seeds[("melo", "linear")]
    assert float(row["diff"]) == pytest.approx(md_)
    assert float(row["p"]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)  # df = 2 closed form
    # 4 rows with 2+ seeds against linear (recast, melo, finetune, dora) + 4 against recast.
    assert row["holm_family"] == "8" and float(row["p_holm"]) >= float(row["p"])
    assert row["verdict"] == "better"
    assert seeds[("adaptformer", "linear")]["verdict"] == "n/a"  # one seed: no test across seeds

    images = {(r["method"], r["reference"]): r for r in tests if r["test"] == "paired bootstrap over images"}
    assert float(images[("melo", "linear")]["diff"]) == pytest.approx(md_)  # same seeds, same images: same mean
    assert images[("melo", "linear")]["verdict"] == "better"
    assert images[("dora", "linear")]["verdict"] == "n/a"  # schema-1 run without predictions
    # McNemar per seed: discordant counts from the right/wrong vectors, counted here by hand.
    mc = {r["test"]: r for r in tests if r["method"] == "melo" and r["reference"] == "linear"}
    for k, seed in enumerate(SEEDS):
        a = np.concatenate(_rights("melo", k))
        b = np.concatenate(_rights("linear", k))
        b_, c_ = int(np.sum(a & ~b)), int(np.sum(~a & b))
        detail = mc[f"McNemar mid-p, seed {seed}"]["detail"]
        assert f"b={b_} " in detail and f"c={c_} " in detail

    t2 = _rows(report / "tables" / "table2_vit_tiny_synthetic.csv")
    assert t2["melo"]["vs_linear_seeds"].startswith("better (p=")
    assert t2["dora"]["vs_linear_images"] == "n/a" and t2["linear"]["vs_linear_seeds"] == ""
    readme = (report / "README.md").read_text()
    assert "tests over test images: not available for 4 of 16 runs" in readme and "dora-s42" in readme


def test_metrics_and_transfer_tables(report):
    m = _rows(report / "tables" / "metrics_vit_tiny_synthetic.csv")
    # finetune: task 0 learnt at 98, final 30/31/29 of 50 -> forgetting = 98 - final (one earlier task).
    fgt = [98.0 - 100.0 * SETUP["finetune"][0][k][0] / N for k in range(3)]
    assert float(m["finetune"]["forgetting"]) == pytest.approx(sum(fgt) / 3)
    assert float(m["finetune"]["bwt"]) == pytest.approx(-sum(fgt) / 3)
    # recast's FWT against linear (same seed): its task-1 accuracy minus linear's (task 1 was learnt last).
    fwt = [100.0 * (SETUP["recast"][0][k][1] - SETUP["linear"][0][k][1]) / N for k in range(3)]
    assert float(m["recast"]["fwt"]) == pytest.approx(sum(fwt) / 3)
    # plasticity gap: finetune's just-learnt accuracies [98, final task 1] minus recast's [task 0, task 1].
    gaps = [
        (
            (98.0 - 100.0 * SETUP["recast"][0][k][0] / N)
            + 100.0 * (SETUP["finetune"][0][k][1] - SETUP["recast"][0][k][1]) / N
        )
        / 2
        for k in range(3)
    ]
    assert float(m["recast"]["plasticity_gap"]) == pytest.approx(sum(gaps) / 3)
    assert m["linear"]["fwt"] == ""  # the reference itself
    tr = _rows(report / "tables" / "transfer_vit_tiny_synthetic.csv")
    assert float(tr["recast"]["fwt_t1"]) == pytest.approx(sum(fwt) / 3)


def test_front_task_agnostic_and_figures(report):
    with (report / "tables" / "front_vit_tiny_synthetic.csv").open() as f:
        front = [(r["axis"], r["method"]) for r in csv.DictReader(f)]
    on_bytes = [m for a, m in front if a == "bytes_per_task"]
    assert on_bytes == ["linear", "recast", "adaptformer", "melo"]  # cheaper and less accurate, in cost order
    assert "finetune" not in on_bytes and "dora" not in on_bytes  # dominated by melo
    assert [m for a, m in front if a == "task_switch_ms"][0] == "linear"
    assert any(a == "compute_hours" for a, _ in front)
    agn = _rows(report / "tables" / "task_agnostic_vit_tiny_synthetic.csv")
    assert float(agn["recast"]["task_agnostic_acc"]) == pytest.approx(71.0)
    assert float(agn["recast"]["task_id_acc"]) == pytest.approx(91.0)
    assert float(agn["recast"]["task_aware_acc"]) == pytest.approx(sum(_avg("recast", k) for k in range(3)) / 3)
    assert agn["recast"]["rule"] == "max_softmax" and "melo" not in agn
    for name in ("front_vit_tiny_synthetic.png", "curves_vit_tiny_synthetic.png"):
        assert (report / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (report / "README.md").read_text()
    assert "## Metrics" in readme and "Chaudhry" in readme and "Holm" in readme
    assert "task-switch time: not recorded by 4 of 16 runs" in readme  # dora and adaptformer are schema 1


def test_bad_inputs_are_one_line_or_a_note(bench, tmp_path, capsys):
    future = tmp_path / "future"
    write_run(future, "r", "linear", 1, [[50.0]], schema_version=3)
    assert main(["report", str(future), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schema_version 3" in err[0] and "reads versions 1-2" in err[0]
    assert not (tmp_path / "r1").exists()

    mixed = tmp_path / "mixed"
    write_run(mixed, "a", "linear", 1, [[50.0, None], [50.0, 60.0]])
    write_run(mixed, "b", "linear", 1, [[50.0, None], [50.0, 60.0]], backbone="resnet_tiny")
    write_run(mixed, "c", "recast", 1, [[50.0, None, None], [50.0, 60.0, None], [50.0, 60.0, 70.0]])
    stale = write_run(mixed, "d", "melo", 1, [[50.0, None], [None, None]], [right_vector(4, 2), right_vector(4, 4)])
    res = json.loads((stale / "results.json").read_text())
    res["final_acc"][1] = 25.0  # results.json no longer matches its predictions
    (stale / "results.json").write_text(json.dumps(res))
    two = [right_vector(4, 2), right_vector(4, 3)]
    for name, method, test_hash in (("e", "linear", "aa"), ("f", "melo", "bb")):  # seed 2: other test images
        write_run(
            mixed,
            name,
            method,
            2,
            [[50.0, None], [None, None]],
            two,
            split_hashes={"t0": {"train": "x", "val": "y", "test": test_hash}},
        )
    out = tmp_path / "r2"
    assert main(["report", str(mixed), "--out", str(out), "--quiet"]) == 0
    assert (out / "tables" / "table1_resnet_tiny_synthetic.csv").is_file()
    assert (out / "tables" / "table2_vit_tiny_synthetic.csv").is_file()
    tests = (out / "tables" / "tests_vit_tiny_synthetic.md").read_text()
    assert "ran different tasks: not compared" in tests and "stale file" in tests
    assert "seed 2: split_hashes say the test sets of t0 differ" in tests
