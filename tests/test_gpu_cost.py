"""The cost model: stream sizes from the datasets' official counts, each row's work from its counted FLOPs and its
strategy's passes, the GPU-hours arithmetic, the modelled MFU's derivation from its sources, measured figures from a
gpu-check report (derived from its runs' timing), and the card's bf16 peak."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from recast_bench.cli import main
from recast_bench.config import StreamConfig
from recast_bench.cost import Figures, bench_row, estimate, measured_figures, modelled, run_seconds, stream_sizes
from recast_bench.errors import UserError
from recast_bench.gpucheck.figures import TaskCounts, case_timing, cost_inputs
from recast_bench.perf.flops import StepFlops, load_table
from recast_bench.perf.work import (
    EWC_EXP_OPS,
    EWC_STEP_OPS,
    HOST_US_PER_OP,
    Settings,
    TaskSize,
    Work,
    gdumb_memory,
    row_work,
)


def _stream(**kw):  # noqa: ANN003, ANN202
    return OmegaConf.structured(StreamConfig(**kw))


def test_six_stream_sizes_follow_the_official_splits():
    sizes = {s.name: s for s in stream_sizes(_stream(name="six"))}
    assert list(sizes) == ["flowers102", "aircraft", "mit67", "cifar100", "cifar10", "cub200"]
    assert (sizes["flowers102"].train, sizes["flowers102"].val, sizes["flowers102"].test) == (1020, 1020, 6149)
    assert (sizes["cifar10"].train, sizes["cifar10"].val, sizes["cifar10"].test) == (45000, 5000, 10000)
    assert sizes["cub200"].classes == 200 and sizes["cifar10"].classes == 10
    assert sum(s.train for s in sizes.values()) == 104_573  # the figure of the GPU review
    capped = stream_sizes(_stream(name="six", tasks=["cifar10"], max_train_per_task=512, max_eval_per_task=256))
    assert [(s.train, s.val, s.test) for s in capped] == [(512, 256, 256)]


FIG = Figures(tflops={"compiled": 100.0, "eager": 50.0}, eval_tflops={"compiled": 200.0, "eager": 100.0},
              epoch_fixed_s=0.5, val_fixed_s=0.25, task_fixed_s=10.0, run_start_s=20.0, gain={1: 1.0, 2: 1.6},
              loader_img_s={"uint8": 1e9, "float": 1e9})  # fmt: skip


def test_run_seconds_arithmetic():
    w = Work(epochs=20, val_passes=20, tasks=2, host_s=3.0)
    w.add("train", 1e6, 50.0, "compiled")  # 50 PFLOP at 100 TFLOP/s: 500 s
    w.add("teacher", 1e6, 10.0, "eager", "float")  # 10 PFLOP at 50: 200 s
    w.eval["compiled"] += 2e6  # 2 PFLOP at 200: 10 s
    fixed = 20 * 0.5 + 20 * 0.25 + 2 * 10.0 + 20.0 + 3.0
    assert run_seconds(w, FIG) == pytest.approx(710 + fixed)
    # two runs per GPU: the GPU does 1.6x the work of one run in the same time, idle time filled too
    assert run_seconds(w, FIG, 2) == pytest.approx((710 + fixed) / 1.6)
    # ... unless the loaders cannot feed it: a million float images at 1,000/s, a million uint8 at 10,000/s
    slow = replace(FIG, loader_img_s={"uint8": 1e4, "float": 1e3})
    assert run_seconds(w, slow, 2) == pytest.approx(1100 + fixed / 1.6)
    assert w.without(("teacher",)).train == {"compiled": 5e7, "eager": 0.0}


ROW = StepFlops(forward=1.0, backward=2.0, forward_fixed=0.0, backward_fixed=64.0, eval=1.0, eval_fixed=0.0,
                trainable=0, counted_on="meta")  # fmt: skip
"""A counted step: 3 GFLOP per training image plus 64 per step (1 per image at batch 64), 1 per evaluated image."""
SIZES = [TaskSize("a", 640, 100, 200, 10), TaskSize("b", 6400, 300, 400, 20)]


def _work(method: str, epochs: int = 10, **settings) -> Work:  # noqa: ANN003
    return row_work(method, SIZES, epochs, ROW, ROW, Settings(batch=64, **settings))


def test_each_strategy_adds_what_its_source_does():
    plain = 10 * (640 + 6400) * 4.0  # 4 GFLOP per training image at batch 64
    ewc = _work("ewc")
    assert ewc.parts["train"][3] == pytest.approx(plain) and ewc.train["compiled"] == 0  # avalanche runs eager
    assert ewc.parts["ewc importance pass"][2:] == (7040, pytest.approx(7040 * 4.0))  # once per experience
    # task b: 100 steps, 1 earlier experience
    assert ewc.host_s == pytest.approx(10 * 100 * (EWC_STEP_OPS + 1 * EWC_EXP_OPS) * HOST_US_PER_OP * 1e-6)
    assert ewc.val_passes == 2 and ewc.epochs == 20 and ewc.tasks == 2  # validated once per task
    lwf = _work("lwf")  # from the 2nd experience: a second training pass and the teacher's forward
    assert lwf.parts["lwf second pass and teacher"][2:] == (64000, pytest.approx(64000 * (4.0 + 1.0)))
    er = _work("er-ace", batch_size_mem=32)  # a replay batch of 32 beside each batch of 64, from the 2nd experience
    assert er.parts["er-ace replay batches"][2] == 32000 and er.loaded["float"] == pytest.approx(10 * 7040 + 32000)
    der = _work("derpp")  # a replay batch of the stream's size, and the buffer logits after every experience
    assert der.parts["derpp replay batches"][2] == 64000 and der.parts["derpp buffer logits"][2] == 7040
    gdumb = _work("gdumb", mem_size=300)  # retrains on its memory: 300 // classes seen per class, at most its own
    assert gdumb.parts["train"][2] == 10 * sum(gdumb_memory(SIZES, 300))
    assert _work("l2p").loaded["float"] == 0 and _work("gdumb").loaded["uint8"] == (100 + 200) + (300 + 600)


def test_gdumb_memory_is_class_balanced_over_the_classes_seen():
    sizes = [TaskSize("a", 100, 0, 0, 10), TaskSize("b", 10000, 0, 0, 10)]
    # task a: 40 per class, but a class has only 10; task b: 20 per class over 20 classes
    assert gdumb_memory(sizes, 400) == [100, 10 * 10 + 10 * 20]


def test_lightning_rows_and_their_hooks():
    recast = _work("recast")
    assert recast.train["compiled"] == pytest.approx(10 * 7040 * 4.0) and recast.val_passes == 20
    assert recast.eval["compiled"] == pytest.approx(10 * 400 + 200 + 600)  # val every epoch, every seen task tested
    inflora = _work("inflora", max_batches=None)  # covariances before and after each task, forward only, eager
    assert inflora.parts["inflora covariance passes"][2:] == (2 * 7040, pytest.approx(2 * 7040 * 1.0))
    assert _work("rosa@full", warmup_steps=64, grad_batches=1).parts["rosa warm-up"][2] == 2 * 65 * 64
    linear = _work("linear")  # features once: both flips of train, val and test
    assert linear.eval["eager"] == 2 * 7040 + 400 + 600 and linear.epochs == 0


def test_modelled_mfu_follows_its_sources():
    from recast_bench.perf import mfu

    steps = mfu.resnet_eager(load_table()["references"])
    assert steps["a100_resnet50"] == pytest.approx(0.192, abs=5e-4)  # 2,470 img/s x 24.3 GFLOP / 312 TFLOP/s
    assert steps["h100_over_a100"] == pytest.approx(14.4 / 7.8)
    assert steps["h100_resnet50"] == pytest.approx(0.112, abs=5e-4)
    assert steps["resnet34_over_resnet50"] == pytest.approx(1.50, abs=0.005)
    m = mfu.modelled_mfu(load_table()["references"])
    assert m["resnet"]["eager"] == pytest.approx(0.168, abs=5e-4) and m["vit"] == {"compiled": 0.159, "eager": 0.066}
    fig = modelled("vit", compiled=True)
    assert fig.tflops["compiled"] == pytest.approx(0.159 * 989) and fig.mfu("eager") == pytest.approx(0.066)
    assert modelled("vit", compiled=False).tflops["compiled"] == pytest.approx(0.066 * 989)


def _timing(img_s: float, fixed: float, val: float, task: float, eval_s: float, images: int = 800) -> dict:
    return {"warmup_steps": 10, "timed_steps": images // 64, "timed_images": images, "img_s": img_s,
            "img_s_device": 2 * img_s, "epoch_fixed_s": fixed, "val_s": val, "task_fixed_s": task,
            "eval_s": eval_s}  # fmt: skip


def test_fixed_costs_and_achieved_flops_from_one_and_three_epoch_runs(tmp_path):
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
    assert fig["img_s"] == pytest.approx(1000) and fig["eval_img_s"] == pytest.approx(1200 / 1.5)
    assert fig["epoch_fixed_s"] == pytest.approx(1.36) and fig["val_fixed_s"] == pytest.approx(0.1)
    assert fig["task_fixed_s"] == pytest.approx(2.75 + 3.0 + 0.15) and fig["gain"] == {"2": pytest.approx(1.5)}
    # the warm-up steps' images at each run's own batch (a ViT card's 128), not the trainer default: 2.0 - 1280 / 1000
    at_128 = [r | {"batch_size": 128} for r in rows]
    fig_128 = cost_inputs(at_128, {r["case"]: counts for r in rows}, batch=64)["vit"]
    assert fig_128["epoch_fixed_s"] == pytest.approx(0.72)

    report = {"device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "compile": True, "cost_inputs": {"vit": fig}}
    (tmp_path / "gc.json").write_text(json.dumps(report))
    got, src = measured_figures(tmp_path / "gc.json")
    v = got["vit"]
    recast = StepFlops(**load_table()["backbones"]["vit_small"]["rows"]["recast"])
    # achieved TFLOP/s: 1,000 RECAST images/s x its counted FLOPs at its card's batch of 128
    assert v.tflops["compiled"] == pytest.approx(1000 * recast.train(128) / 1e3)
    assert v.mfu() == pytest.approx(v.tflops["compiled"] / 989.0)  # an H100's dense bf16 peak
    base = modelled("vit", True)  # eager steps keep the modelled eager/compiled ratio
    assert v.tflops["eager"] / v.tflops["compiled"] == pytest.approx(base.tflops["eager"] / base.tflops["compiled"])
    assert v.eval_tflops["compiled"] == pytest.approx(800 * recast.eval_image(256) / 1e3)
    assert v.gain[2] == pytest.approx(1.5) and v.gain[3] == base.gain[3]  # not measured: modelled
    assert {"tflops[compiled]", "gain[2]", "epoch_fixed_s"} <= set(v.measured) and "resnet" not in got
    assert v.source.startswith("measured on NVIDIA H100 80GB HBM3") and src == str(tmp_path / "gc.json")
    (tmp_path / "cpu.json").write_text(json.dumps({**report, "device": {"type": "cpu"}}))
    with pytest.raises(Exception, match="not on a GPU"):
        measured_figures(tmp_path / "cpu.json")


def test_cost_cli_says_which_figures_are_modelled(capsys):
    args = ["cost", "--backbone", "resnet34", "--stream", "synthetic", "--methods", "recast", "ewc", "linear"]
    assert main([*args, "--seeds", "1 2", "--runs-per-gpu", "2", "--basis", "trainer.epochs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cost: 6 runs of resnet34 on synthetic (4 tasks") and "2 per GPU" in out[0]
    assert "MODELLED figures: no GPU measured them" in out[0]
    assert [line.split()[0] for line in out[2:5]] == ["recast", "ewc", "linear"]
    assert out[2].split()[3] == f"{StepFlops(**load_table()['backbones']['resnet34']['rows']['recast']).train(64):.2f}"
    assert "(16.8 %)" in out[5] and "(* modelled" in out[6]
    basis = "\n".join(out[7:])
    for factor in ("ResNet-50's MFU", "compile gain 1.0", "torch.compile", "TF32 instead of bf16", "float CPU loader",
                   "one run per GPU", "no fixed costs", "EWC's penalty", "extra passes", "feature cache"):  # fmt: skip
        assert factor in basis


def test_each_row_costs_its_cards_epochs_and_flops(tmp_path, capsys):
    args = ["cost", "--backbone", "vit_small", "--stream", "six", "--methods", "recast", "inflora", "adaptformer"]

    def rows(*extra: str) -> dict:
        assert main([*args, "--json", str(tmp_path / "cost.json"), *extra]) == 0
        capsys.readouterr()
        return {r["method"]: r for r in json.loads((tmp_path / "cost.json").read_text())["rows"]}

    by_card = rows()
    assert by_card["recast"]["epochs"] == 100 and by_card["inflora"]["epochs"] == 10  # the paper's 10 for InfLoRA
    assert by_card["inflora"]["hours_per_run"] < by_card["recast"]["hours_per_run"] / 5
    # a frozen backbone behind adapters costs less per image than RECAST's generated-weight gradients
    assert by_card["adaptformer"]["hours_per_run"] < by_card["recast"]["hours_per_run"]
    given = rows("trainer.epochs=3")  # an explicit value applies to every run, as in make bench
    assert given["recast"]["epochs"] == given["inflora"]["epochs"] == 3


def test_a_row_the_table_lacks_is_counted_on_the_fly(capsys):
    row = bench_row("finetune", "vit_tiny", 100)  # neither the row nor the backbone is in the packaged table
    assert row.flops.train(64) == pytest.approx(row.full.train(64)) and row.flops.counted_on == "meta"
    assert "counting the FLOPs of finetune on vit_tiny now" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown method"):
        bench_row("nosuchmethod", "vit_tiny", 100)
    rows = [bench_row("gdumb", "resnet34", 100), bench_row("er-ace", "resnet34", 100)]
    est = estimate(rows, stream_sizes(_stream(name="six")), 1, "resnet34", modelled("resnet", True))
    gdumb, er = (r["hours_per_run"] for r in est.rows)
    assert gdumb < er / 3  # GDumb trains on its 4,400-image memory, ER-ACE on the stream plus replay


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
