"""``recast-bench leaderboard`` and ``dashboard`` on hand-made runs: the rows equal the runs, the files validate on
read, other schema versions and bad reference rows are one line, the W&B spec matches the runs offline."""

from __future__ import annotations

import csv
import json
import math
import socket
from pathlib import Path

import pytest
from fixtures.results import write_run

from recast_bench.cli import main
from recast_bench.report import leaderboard_schema as schema

SEEDS = (42, 1998, 3142592)
RECAST_ACC = (76.0, 78.0, 77.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lb-runs")
    for k, seed in enumerate(SEEDS):
        write_run(root, f"linear-s{seed}", "linear", seed, [[70.0, None], [70.0, 60.0 + k]])
        a = RECAST_ACC[k]
        write_run(
            root,
            f"recast-s{seed}",
            "recast",
            seed,
            [[a, None], [a, a]],
            params=96,
            schema_version=2,
            git_commit="abc123",
            task_switch_ms=7.5,
            versions={"torch": "2.14.1", "timm": "1.0.31", "lightning": "2.6.6", "avalanche": "0.6.0"},
        )
    write_run(
        root,
        "melo-s42",
        "melo",
        42,
        [[90.0, None], [90.0, 88.0]],
        params=768,
        device="cuda:0",
        gpu_name="NVIDIA H200",
        wall_s=7200.0,
        protocol={"card": None, "overridden": [], "unapplied": []},
    )
    (root / "recast-s42" / "wandb").mkdir()  # one run that logged to W&B
    return root


def _board(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "board" / "lb.json"
    assert main(["leaderboard", *args, "--out", str(out)]) == 0
    assert out.with_suffix(".md").is_file() and out.with_suffix(".csv").is_file()
    return schema.read(out)


def test_rows_equal_the_runs(runs, tmp_path):
    data = _board(tmp_path, str(runs))
    assert data["schema"] == "recast-bench-leaderboard" and data["schema_version"] == 1
    rows = {r["label"]: r for r in data["rows"]}
    assert list(rows) == ["melo", "recast", "linear"]  # by accuracy
    r = rows["recast"]
    mean = sum(RECAST_ACC) / 3
    half = 4.302653 * math.sqrt(sum((a - mean) ** 2 for a in RECAST_ACC) / 2) / math.sqrt(3)
    assert r["acc"]["mean"] == pytest.approx(mean) and r["acc"]["ci95"][1] == pytest.approx(mean + half, rel=1e-5)
    assert r["seeds"] == sorted(SEEDS) and r["params_per_task"] == 96 and r["bytes_per_task"] == 384
    assert r["git_commit"] == "abc123" and r["versions"]["avalanche"] == "0.6.0" and r["task_switch_ms"] == 7.5
    # The card's value beside the one run, with its source (recast's card: 100 epochs, from the paper).
    assert r["protocol"]["card"] == "recast"
    assert r["protocol"]["overridden"]["trainer.epochs"] == {"ran": 1, "card": 100, "source": "paper"}
    assert r["compute"]["cpu_wall_hours"] == pytest.approx(0.01) and r["compute"]["gpu_hours"] is None
    assert r["paper"]["acc"] == 85.0 and r["paper"]["vs_ci"] == "outside (paper above)"
    assert r["paper"]["same_backbone"] is False
    lin = rows["linear"]
    assert lin["git_commit"] is None and lin["versions"]["avalanche"] is None
    assert any(m.startswith("git commit: not recorded by 3 of 3 runs") for m in lin["missing"])
    melo = rows["melo"]  # one seed on a GPU: no interval; GPU-hours = wall x GPUs
    assert melo["acc"]["ci95"] is None and melo["compute"]["gpu_hours"] == pytest.approx(2.0)
    assert melo["gpu_name"] == "NVIDIA H200" and melo["device"] == "cuda:0"
    refs = {r["label"]: r for r in data["reference_rows"]}
    assert (
        refs["RECAST (paper)"]["acc"] == 85.0 and "best test accuracy" in refs["RECAST (paper)"]["protocol_difference"]
    )
    assert refs["CPG (CPG README)"]["task_acc"]["flowers102"] == 96.62
    assert all(r["protocol_difference"] for r in data["reference_rows"])
    md = (tmp_path / "board" / "lb.md").read_text()
    assert f"{mean:.2f} ± {half:.2f}" in md and "89.00 (1 seed)" in md and "Reference rows" in md
    with (tmp_path / "board" / "lb.csv").open() as f:
        by_label = {row["label"]: row for row in csv.DictReader(f)}
    assert by_label["recast"]["torch"] == "2.14.1" and by_label["recast"]["overridden"] == "trainer.epochs=1"


def test_user_reference_rows_and_merging(runs, tmp_path, capsys):
    mine = tmp_path / "mine.json"
    mine.write_text(
        json.dumps(
            [
                {
                    "label": "my ViT-S run",
                    "acc": 84.1,
                    "source": "our lab, 2026-11",
                    "protocol_difference": "pooled split, 50 epochs",
                }
            ]
        )
    )
    data = _board(tmp_path, str(runs / "linear-s42"), "--no-paper", "--reference", str(mine))
    assert [r["label"] for r in data["reference_rows"]] == ["my ViT-S run"]
    # An earlier leaderboard among the inputs keeps its rows; new runs are added beside them.
    first = tmp_path / "board" / "lb.json"
    out2 = tmp_path / "two.json"
    assert main(["leaderboard", str(first), str(runs / "melo-s42"), "--no-paper", "--out", str(out2)]) == 0
    assert sorted(r["label"] for r in schema.read(out2)["rows"]) == ["linear", "melo"]

    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"label": "x", "acc": 80.0, "source": "s"}]))
    assert main(["leaderboard", str(runs), "--reference", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol_difference" in err[0]
    assert not (tmp_path / "x.json").exists()  # nothing written on a mistake


def test_other_schema_versions_and_broken_files_are_one_line(runs, tmp_path, capsys):
    data = _board(tmp_path, str(runs), "--no-paper")
    future = tmp_path / "future.json"
    future.write_text(json.dumps({**data, "schema_version": 2}))
    assert main(["leaderboard", str(future), "--out", str(tmp_path / "y.json")]) == 2
    assert "leaderboard schema_version 2; this recast-bench reads version 1" in capsys.readouterr().err
    broken = json.loads(json.dumps(data))
    broken["rows"][0]["acc"]["n"] = 7
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match=r"invalid leaderboard: rows\[0\]: acc.n = 7"):
        schema.read(tmp_path / "broken.json")
    broken["rows"][0]["acc"] = {"mean": 50.0, "n": 3, "ci95": [60.0, 70.0]}
    with pytest.raises(ValueError, match="outside its ci95"):
        schema.validate(broken)
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    assert main(["leaderboard", str(tmp_path / "other.json"), "--out", str(tmp_path / "z.json")]) == 2
    assert "is not a recast-bench leaderboard" in capsys.readouterr().err


def test_dashboard_dry_run_spec_matches_the_runs(runs, tmp_path):
    out = tmp_path / "spec.json"
    assert main(["dashboard", str(runs), "--project", "p", "--entity", "me", "--dry-run", "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    assert spec["schema"] == "recast-bench-dashboard" and spec["project"] == "p" and spec["entity"] == "me"
    sections = {s["wandb_group"]: s for s in spec["sections"]}
    assert set(sections) == {"vit_tiny-synthetic-table2", "vit_tiny-synthetic-default"}  # melo ran without a card
    sec = sections["vit_tiny-synthetic-table2"]
    assert sec["filters"] == 'Group = "vit_tiny-synthetic-table2"'
    methods = {m["label"]: m for m in sec["methods"]}
    assert set(methods) == {"linear", "recast"}
    assert methods["recast"]["avg_acc"]["mean"] == pytest.approx(sum(RECAST_ACC) / 3)
    assert methods["recast"]["seeds"] == sorted(SEEDS) and methods["recast"]["bytes_per_task"] == 384
    kinds = [p["kind"] for p in sec["panels"]]
    assert kinds.count("markdown") == 2 and "scatter" in kinds and "bar" in kinds
    lines = [p for p in sec["panels"] if p["kind"] == "line"]
    assert lines[0]["y"] == ["task/t0/test/acc", "task/t1/test/acc"]  # the keys `logger=wandb` logs
    assert any("± " in p.get("text", "") for p in sec["panels"])
    assert spec["runs_on_wandb"] == 1 and "6 of 7 runs have no W&B run" in spec["notes"][0]
    assert "PanelGrid" in spec["wandb_workspaces_blocks"] and "MarkdownBlock" in spec["wandb_workspaces_blocks"]


def test_dashboard_online_without_network_or_login_is_one_line(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: no network
    assert main(["dashboard", str(runs / "linear-s42"), "--project", "p", "--entity", "me"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recast-bench: error: cannot reach W&B at 127.0.0.1:9") and "--dry-run" in err[-1]

    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    with socket.create_server(("127.0.0.1", 0)) as server:  # a reachable "server", so the login check is next
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert main(["dashboard", str(runs / "linear-s42"), "--project", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recast-bench: error: W&B") and "wandb login" in err[-1]
    assert main(["dashboard", str(runs), "--project", "p", "--dry-run"]) == 2  # a dry run needs --out
