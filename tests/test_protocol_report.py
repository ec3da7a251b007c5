"""A run records its protocol card, and ``recast-bench report`` shows the protocol table beside the paper table."""

from __future__ import annotations

import csv
import json

from recast_bench.cli import main


def test_run_records_card_and_report_shows_protocol(run_args, tmp_path):
    out = tmp_path / "melo"
    assert main(run_args("melo", out=out, extra=["trainer.epochs=1", "++stream.num_tasks=2"])) == 0
    res = json.loads((out / "results.json").read_text())
    protocol = res["config"]["protocol"]
    assert protocol["card"] == "melo" and protocol["table"] == "table2"
    # conftest's tiny trainer sets epochs and batch: recorded as departures from the card, not silently.
    assert {"trainer.epochs", "trainer.batch_size"} <= set(protocol["overridden"])
    assert res["config"]["trainer"]["grad_clip"] == 1.0 and res["config"]["method"]["melo"]["alpha"] == 4.0

    rep = tmp_path / "report"
    assert main(["report", str(out), "--out", str(rep), "--quiet"]) == 0
    rows = {r["row"]: r for r in csv.DictReader((rep / "tables" / "protocol_table2.csv").open())}
    assert list(rows)[:4] == ["linear", "rosa@sparse_mlp", "recast+rosa@sparse_mlp", "recast"]
    assert rows["melo"]["measured_count"] == str(res["trainable_params_per_task"][0]) != ""
    assert rows["melo"]["count"] == "18432" and rows["linear"]["measured_count"] == ""
    assert rows["dora"]["flagged"] == "method.dora.alpha"
    readme = (rep / "README.md").read_text()
    assert "Protocol: Table 2 protocol (ViT-S)" in readme and "Protocol: Figures" in readme
    assert not (rep / "tables" / "protocol_table1.csv").exists()  # no ResNet run among the inputs
