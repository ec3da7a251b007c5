"""The cost model: stream sizes from the datasets' official counts, the GPU-hours arithmetic, measured figures from a
gpu-check report (derived from its runs' timing), the FLOP count and the card's bf16 peak."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from recast_bench.cli import main
from recast_bench.config import StreamConfig
from recast_bench.cost import Figures, TaskSize, estimate, measured_figures, modelled, run_hours, stream_sizes
from recast_bench.gpucheck.figures import TaskCounts, case_timing, cost_inputs


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


FIG = Figures(img_s=500.0, eval_img_s=1000.0, epoch_fixed_s=0.5, val_fixed_s=0.25, task_fixed_s=10.0,
              run_start_s=20.0, gain={1: 1.0, 2: 1.6})  # fmt: skip


def test_run_hours_arithmetic():
    sizes = [TaskSize("a", 1000, 100, 200), TaskSize("b", 3000, 300, 400)]
    # train 4000 x 10 / 500 = 80 s; per epoch 2 x (0.5 + 0.25) + 400 / 1000 = 1.9 s, x 10 = 19 s;
    # per task 2 x 10 + (200 x 2 + 400 x 1) / 1000 = 20.8 s; run start 20 s
    assert run_hours("recast", sizes, 10, FIG) == pytest.approx((80 + 19 + 20.8 + 20) / 3600)
    assert run_hours("derpp", sizes, 10, FIG) == pytest.approx((160 + 19 + 20.8 + 20) / 3600)  # replay: 2 passes
    # two runs per GPU: the GPU does 1.6x the work of one run in the same time
    assert run_hours("recast", sizes, 10, FIG, 2) == pytest.approx((80 + 19 + 20.8 + 20) / 1.6 / 3600)
    # ... unless the loaders cannot feed it
    assert run_hours("recast", sizes, 10, replace(FIG, loader_img_s=400.0), 2) == pytest.approx(
        (40000 / 400 + (19 + 20.8 + 20) / 1.6) / 3600
    )
    # linear: features once (2 flips of train, val, test) plus its run's start
    assert run_hours("linear", sizes, 10, FIG) == pytest.approx(((2 * 4000 + 400 + 600) / 1000 + 20) / 3600)
    est = estimate(["recast", "linear"], sizes, 10, 3, "vit_small", FIG)
    assert est.runs == 6 and est.rows[1]["hours"] == pytest.approx(run_hours("linear", sizes, 10, FIG) + 2 * 20 / 3600)
    assert modelled("vit", compiled=True).img_s == pytest.approx(1.4 * modelled("vit", compiled=False).img_s)


def _timing(img_s: float, fixed: float, val: float, task: float, eval_s: float, images: int = 800) -> dict:
    return {"warmup_steps": 10, "timed_steps": images // 64, "timed_images": images, "img_s": img_s,
            "img_s_device": 2 * img_s, "epoch_fixed_s": fixed, "val_s": val, "task_fixed_s": task,
            "eval_s": eval_s}  # fmt: skip


def test_fixed_costs_from_one_and_three_epoch_runs(tmp_path):
    counts = [TaskCounts(100, 50, 100), TaskCounts(5400, 600, 1000)]
    # task 1 is the main one (most timed images): F1 = 5.0, mean F3 = 3.0 -> steady (3 x 3 - 5) / 2 = 2.0
    one = {"timing": [_timing(1000, 9.0, 1.0, 3.0, 0.5, 64), _timing(1000, 5.0, 1.0, 4.0, 1.0)], "wall_s": 40.0}
    three = {"timing": [_timing(1000, 9.0, 0.9, 3.0, 0.5, 64), _timing(1000, 3.0, 0.9, 4.0, 1.0, 2400)], "wall_s": 60.0}
    rows = [
        {"case": f"timing/vit_small/recast#{tag}", "group": "timing", "tag": tag, "backbone": "vit_small",
         "bb_family": "vit", "status": "pass", "timing": case_timing(res, counts), "run_wall_s": res["wall_s"],
         "process_s": res["wall_s"] + 9.0, "peak_gpu_mem_mb": 5000.0}
        for tag, res in (("1ep", one), ("3ep", three))
    ] + [
        {"case": f"concurrency/vit_small/recast#{t}", "group": "concurrency", "tag": t, "backbone": "vit_small",
         "bb_family": "vit", "status": "pass", "timing": case_timing(three, counts), "run_wall_s": 80.0}
        for t in ("a", "b")
    ]  # fmt: skip
    fig = cost_inputs(rows, {r["case"]: counts for r in rows}, batch=64)["vit"]
    assert fig["img_s"] == pytest.approx(1000) and fig["img_s_device"] == pytest.approx(2000)
    # test images after each task: 100, then 1100; eval seconds 0.5 + 1.0
    assert fig["eval_img_s"] == pytest.approx(1200 / 1.5)
    # minus the 10 warm-up steps x 64 images, charged with the steady images: 2.0 - 640 / 1000
    assert fig["epoch_fixed_s"] == pytest.approx(1.36)
    # val: V1 1.0, mean V3 0.9 -> steady 0.85, minus 600 val images at 800 img/s
    assert fig["val_fixed_s"] == pytest.approx(0.1)
    # per task: mean(3 - 0.5, 4 - 1) = 2.75, plus the first epoch's extra: (5 - 2) + (1.0 - 0.85)
    assert fig["task_fixed_s"] == pytest.approx(2.75 + 3.0 + 0.15)
    assert fig["run_start_s"] == pytest.approx(9.0) and fig["peak_gpu_mem_mb"] == 5000.0
    assert fig["gain"] == {"2": pytest.approx(2 * 60 / 80)}

    report = {"device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "compile": True, "cost_inputs": {"vit": fig}}
    (tmp_path / "gc.json").write_text(json.dumps(report))
    got, src = measured_figures(tmp_path / "gc.json")
    assert got["vit"].img_s == pytest.approx(1000) and got["vit"].gain[2] == pytest.approx(1.5)
    assert got["vit"].gain[3] == modelled("vit", True).gain[3]  # not measured: modelled
    assert "img_s" in got["vit"].measured and "gain[2]" in got["vit"].measured and "resnet" not in got
    assert got["vit"].source.startswith("measured on NVIDIA H100 80GB HBM3")
    (tmp_path / "cpu.json").write_text(json.dumps({**report, "device": {"type": "cpu"}}))
    with pytest.raises(Exception, match="not on a GPU"):
        measured_figures(tmp_path / "cpu.json")


def test_cost_cli_says_which_figures_are_modelled(tmp_path, capsys):
    args = ["cost", "--backbone", "vit_small", "--stream", "synthetic", "--methods", "recast", "linear"]
    assert main([*args, "--seeds", "1 2", "--runs-per-gpu", "2", "--basis", "trainer.epochs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cost: 4 runs of vit_small on synthetic (4 tasks") and "2 per GPU" in out[0]
    assert "MODELLED figures: no GPU measured them" in out[0]
    assert out[2].split()[0] == "recast" and out[3].split()[0] == "linear" and "(* modelled)" in out[4]
    basis = "\n".join(out[5:])
    for factor in ("torch.compile", "TF32 instead of bf16", "float CPU loader", "one run per GPU", "feature cache"):
        assert factor in basis


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


def test_flops_count_macs_twice_and_the_peak_is_the_cards():
    import timm
    import torch

    from recast_bench.perf.gpu import bf16_peak_tflops, flops_per_image, fraction_of_peak

    with torch.device("meta"):  # the real architecture, no weights
        vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    flops = flops_per_image(vit, 224)
    assert flops["forward_gflop"] == pytest.approx(9.2, rel=0.01)  # timm: 4.6 GMACs
    assert flops["train_gflop"] == pytest.approx(3 * flops["forward_gflop"], rel=0.01)
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0 and bf16_peak_tflops("Tesla V100-SXM2-16GB") is None
    assert fraction_of_peak(10000, 27.5, "NVIDIA H200") == pytest.approx(10000 * 27.5e9 / 989e12)
    assert fraction_of_peak(10000, 27.5, "Some GPU") == "unknown"
