"""The cost model's arithmetic: stream sizes from the datasets' official counts, images x epochs / throughput."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from recast_bench.cli import main
from recast_bench.config import StreamConfig
from recast_bench.cost import DEFAULT_EVAL_IMG_S, DEFAULT_TRAIN_IMG_S, TaskSize, estimate, run_hours, stream_sizes


def _stream(**kw):  # noqa: ANN003, ANN202
    return OmegaConf.structured(StreamConfig(**kw))


def test_six_stream_sizes_follow_the_official_splits():
    sizes = {s.name: s for s in stream_sizes(_stream(name="six"))}
    assert list(sizes) == ["flowers102", "aircraft", "mit67", "cifar100", "cifar10", "cub200"]
    assert (sizes["flowers102"].train, sizes["flowers102"].val, sizes["flowers102"].test) == (1020, 1020, 6149)
    assert (sizes["cifar10"].train, sizes["cifar10"].val, sizes["cifar10"].test) == (45000, 5000, 10000)
    assert sum(s.train for s in sizes.values()) == 104_573  # the figure of the GPU review
    capped = stream_sizes(_stream(name="six", tasks=["cifar10"], max_train_per_task=512, max_eval_per_task=256))
    assert [(s.train, s.val, s.test) for s in capped] == [(512, 256, 256)]


def test_run_hours_arithmetic():
    sizes = [TaskSize("a", 1000, 100, 200), TaskSize("b", 3000, 300, 400)]
    train, ev = {("peft", "vit"): 500.0}, {"vit": 1000.0}
    hours, est = run_hours("recast", sizes, 10, "vit", train, ev)
    # train 4000 x 10 / 500 = 80 s; eval (100 + 300) x 10 + 200 x 2 + 400 x 1 = 4800 / 1000 = 4.8 s
    assert hours == pytest.approx((80 + 4.8) / 3600) and est is False
    hours, est = run_hours("derpp", sizes, 10, "vit", train, ev)  # replay: twice the training passes
    assert hours == pytest.approx((160 + 4.8) / 3600) and est is False  # no replay figure: peft's plain-step rate
    hours, est = run_hours("linear", sizes, 10, "vit", {}, ev)  # features once: 2 flips of train + val + test
    assert hours == pytest.approx((2 * 4000 + 400 + 600) / 1000 / 3600) and est is False
    hours, est = run_hours("recast", sizes, 10, "resnet", {}, {})
    expected = (40000 / DEFAULT_TRAIN_IMG_S["resnet"] + 4800 / DEFAULT_EVAL_IMG_S["resnet"]) / 3600
    assert hours == pytest.approx(expected) and est is True


def test_measured_throughput_from_gpu_check_json(tmp_path):
    check = {
        "device": {"type": "cuda", "name": "H100"},
        "cases": [
            {"method": "recast", "backbone": "vit_small", "status": "pass", "train_img_s": 3000, "eval_img_s": 9000},
            {"method": "melo", "backbone": "vit_small", "status": "pass", "train_img_s": 1000, "eval_img_s": 9000},
            {"method": "dora", "backbone": "vit_small", "status": "fail", "train_img_s": 1, "eval_img_s": 1},
        ],
    }
    (tmp_path / "gc.json").write_text(json.dumps(check))
    sizes = [TaskSize("a", 1000, 0, 0)]
    est = estimate(["recast", "melo"], sizes, 9, 3, "vit_small", tmp_path / "gc.json")
    per_run = 9000 / 2000 / 3600  # the median of the passing cases (3000, 1000); the failed case is ignored
    assert est["rows"][0]["hours_per_run"] == pytest.approx(per_run) and not est["rows"][0]["estimated"]
    assert est["gpu_hours"] == pytest.approx(2 * 3 * per_run) and est["runs"] == 6
    cpu = {**check, "device": {"type": "cpu"}}
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    with pytest.raises(Exception, match="not on a GPU"):
        estimate(["recast"], sizes, 1, 1, "vit_small", tmp_path / "cpu.json")


def test_cost_cli_prints_one_line_and_a_table(capsys):
    args = ["cost", "--backbone", "vit_small", "--stream", "synthetic", "--methods", "recast", "linear"]
    assert main([*args, "--seeds", "1 2", "trainer.epochs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cost: 4 runs of vit_small on synthetic (4 tasks") and "GPU-hours" in out[0]
    assert "ESTIMATE" in out[0] and out[2].split()[0] == "recast" and out[3].split()[0] == "linear"


def test_each_row_costs_its_cards_epochs_unless_epochs_are_given(tmp_path, capsys):
    args = ["cost", "--backbone", "vit_small", "--stream", "six", "--methods", "recast", "inflora"]

    def rows(*extra: str) -> dict:
        assert main([*args, "--json", str(tmp_path / "cost.json"), *extra]) == 0
        capsys.readouterr()
        return {r["method"]: r for r in json.loads((tmp_path / "cost.json").read_text())["rows"]}

    by_card = rows()
    assert by_card["recast"]["epochs"] == 100 and by_card["inflora"]["epochs"] == 10  # the paper's 10 for InfLoRA
    assert by_card["inflora"]["hours_per_run"] < by_card["recast"]["hours_per_run"] / 5
    given = rows("trainer.epochs=3")  # an explicit value applies to every run, as in make bench
    assert given["recast"]["epochs"] == given["inflora"]["epochs"] == 3
    assert given["inflora"]["hours_per_run"] == pytest.approx(given["recast"]["hours_per_run"])
