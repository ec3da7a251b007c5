"""``make gpu-check``: the case plan, failure classification, /dev/shm, and the whole CPU form (every case must
pass, and its timing cases give the cost model's figures)."""

from __future__ import annotations

import json

import pytest

from recast_bench.errors import UserError
from recast_bench.gpucheck.cases import FAILURE_CLASSES, classify, not_applicable, plan
from recast_bench.gpucheck.runner import fractions, main


def test_plan_covers_both_tables_timing_and_ddp_only_with_two_gpus():
    one = plan(gpus=1, tiny=False)
    names = {c.name for c in one}
    assert "default/vit_small/rosa@sparse_mlp" in names and "default/resnet34/derpp" in names
    assert {"determinism/vit_small/rosa@sparse_mlp", "determinism/vit_small/inflora"} <= names
    assert {"timing/vit_small/recast#1ep", "timing/resnet34/recast#3ep", "concurrency/vit_small/recast#b"} <= names
    assert "mimicry/vit_base/recast" in names
    assert [c.name for c in one if c.group == "ddp" and not not_applicable(c, 1, False)] == []
    two = plan(gpus=2, tiny=False)
    assert {c.name for c in two if c.group == "ddp"} == {"ddp/vit_small/linear", "ddp/vit_small/recast"}
    assert all(c.backbone in ("vit_tiny", "resnet_tiny") for c in plan(0, tiny=True))
    rosa = next(c for c in one if c.method == "recast+rosa@sparse_mlp")
    assert rosa.method_name == "recast+rosa" and rosa.variant_overrides() == ["method.rosa.variant=sparse_mlp"]
    assert [c.epochs for c in one if c.group == "timing"] == [1, 3, 1, 3]


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("recast-bench: error: ewc runs on avalanche-lib, which is not installed here", "missing_package"),
        ("ModuleNotFoundError: No module named 'wandb'", "missing_package"),
        ("Deterministic behavior was enabled ... CUBLAS_WORKSPACE_CONFIG=:4096:8", "cublas_determinism"),
        ("index_add_cuda_ does not have a deterministic implementation", "nondeterministic_op"),
        ("RuntimeError: No backend type associated with device type cpu", "nccl_cpu_tensor"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "out_of_memory"),
        ("Unexpected bus error in worker: insufficient shared memory (shm)", "shared_memory"),
        ("CUDA error: no kernel image is available for execution on the device", "unsupported_gpu_arch"),
        ("recast-bench: error: non-finite loss (nan) in task 0", "nonfinite_loss"),
        ("Expected all tensors to be on the same device, but found cuda:0 and cpu", "device_mismatch"),
        ("recast-bench: error: ewc runs avalanche on one device; use trainer.devices=1", "avalanche_refuses_ddp"),
        ("timed out after 900 s", "timeout"),
        ("KeyError: 'x'", "other"),
    ],
)  # fmt: skip
def test_failure_classes(text, cls):
    assert classify(text) == cls
    assert cls == "other" or cls in dict(FAILURE_CLASSES)


def test_fraction_of_ceiling():
    rows = [
        {"group": "timing", "tag": "3ep", "backbone": "vit_small", "method": "recast", "img_s": 4000.0},
        {"group": "default", "backbone": "vit_small", "method": "recast", "img_s": 1.0},  # shared the GPU: not used
        {"group": "default", "backbone": "resnet34", "method": "clr", "img_s": 1000.0},
        {"group": "default", "backbone": "vit_small", "method": "melo", "img_s": 1.0},
    ]
    ceiling = {"vit_small": {"bf16": 10000.0}, "resnet34": {"bf16": 2000.0, "bf16_channels_last": 4000.0}}
    assert fractions(rows, ceiling) == {"vit_small/recast": 0.4, "resnet34/clr": 0.25}


def test_shm_is_checked_against_what_the_loaders_need(monkeypatch):
    import recast_bench.gpucheck.preflight as pf

    mib = 2**20
    monkeypatch.setattr(pf, "shm_space", lambda: (64 * mib, 64 * mib))  # docker's default
    # 3 runs x (8 workers x 2 prefetched + 2 held) batches of 256 uint8 256-px images = 2.53 GiB
    with pytest.raises(UserError, match=r"/dev/shm is 64 MiB but the loaders need 2\.53 GiB .*--shm-size=4g"):
        pf.shm_check(3, 8, 256, 256)
    monkeypatch.setattr(pf, "shm_space", lambda: (8192 * mib, 1024 * mib))
    low = pf.shm_check(3, 8, 256, 256)
    assert low["shm_status"] == "low" and "fewer loader workers" in low["shm_warning"]
    assert pf.shm_check(3, 2, 256, 256)["shm_status"] == "ok"  # 0.84 GiB fits in the 1 GiB free
    assert pf.shm_check(3, 0, 256, 256) == {"shm_gb": 8.0, "shm_need_gb": 0.0, "shm_free_gb": 1.0,
                                             "shm_status": "ok"}  # fmt: skip
    # what the GPU form checks: 3 lanes on 16 CPUs (5 workers each), batch 256 (eval) of 224 px models' 256 px photos
    from recast_bench.gpucheck.runner import _shm

    monkeypatch.setattr(pf, "shm_space", lambda: (64 * mib, 64 * mib))
    with pytest.raises(UserError, match=r"3 run\(s\) x \(5 workers x 2 prefetched \+ 2\) batches of 256 uint8 256 px"):
        _shm({"cpus": 16}, cuda=True, lanes=3)
    assert _shm({"cpus": 16}, cuda=False, lanes=1)["shm_status"] == "ok"  # the CPU form loads in-process


@pytest.mark.slow
def test_cpu_form_every_case_passes(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    rc = main(["--out", str(out), "--work", str(tmp_path / "work"), "--cpu-form"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    failed = [(r["case"], r.get("failure_class"), r.get("error")) for r in report["cases"] if r["status"] != "pass"]
    na = {r["case"] for r in report["cases"] if r["status"] == "n/a"}
    assert na == {"ddp/vit_tiny/linear", "ddp/vit_tiny/recast", "concurrency/vit_tiny/recast#a",
                  "concurrency/vit_tiny/recast#b"}  # fmt: skip
    assert rc == 0 and len(failed) == len(na), failed
    assert report["device"]["type"] == "cpu" and report["preflight"]["torch"]
    assert report["passed"] == 28 and report["skipped"] == 0
    for r in report["cases"]:
        if r["group"] == "mimicry":
            assert r["min_cosine"] is not None and r["mimic_s"] > 0
        elif r["status"] == "pass":
            assert r["tasks_done"] == r["tasks"] == 2 and r["exit_code"] == 0 and r["wall_s"] > 0
            assert r["peak_rss_mb"] > 0 and r["eval_devices"] == ["cpu"], r["case"]
            assert r["batch_size"] == 8, r["case"]  # the run's resolved batch (the CPU form's), for cost_inputs
            if r["method"] not in ("ewc", "lwf", "gdumb", "er-ace", "derpp", "l2p"):  # avalanche: no step timing
                assert r["img_s"] > 0 and r["img_s_device"] >= 0.9 * r["img_s"], r["case"]
    for fam in ("vit", "resnet"):
        fig = report["cost_inputs"][fam]
        assert fig["from"] == [f"timing/{fam}_tiny/recast#1ep", f"timing/{fam}_tiny/recast#3ep"]
        assert fig["img_s"] > 0 and fig["eval_img_s"] > 0 and fig["run_start_s"] > 0
        assert min(fig["epoch_fixed_s"], fig["val_fixed_s"], fig["task_fixed_s"]) >= 0
    ceiling = report["ceiling_img_s"]
    assert {"fp32", "bf16"} <= set(ceiling["vit_tiny"]) and ceiling["vit_tiny"]["train_gflop"] > 0
    assert "bf16_channels_last" in ceiling["resnet_tiny"]
    assert "gpu-check: 28 passed, 0 failed, 0 skipped (4 n/a here)" in printed


@pytest.mark.slow
def test_gpu_form_data_is_flowers_and_a_large_cifar10(tmp_path):
    from recast_bench.gpucheck.cases import GPU_TEST_IMAGES_EVALUATED, GPU_TRAIN_IMAGES, GPU_VAL_IMAGES, Case
    from recast_bench.gpucheck.figures import seen_test
    from recast_bench.gpucheck.runner import gpu_data, run_overrides, stream_counts

    data = gpu_data(tmp_path)
    assert data[:2] == ["stream=six", "stream.tasks=[flowers102,cifar10]"]
    case = Case("default", "vit_tiny", "recast")  # the GPU form's streams, at the tiny backbone's 32 px
    counts = stream_counts(case, run_overrides(case, data, tmp_path), {})
    # flowers: 10 classes x (10 train, 5 val, 10 test); cifar10: 600/class train (10 % held out for val), 100 test
    assert [(c.train, c.val, c.test) for c in counts] == [(100, 50, 100), (5400, 600, 1000)]
    assert (GPU_TRAIN_IMAGES, GPU_VAL_IMAGES) == (5500, 650)  # the budget's figures match the data
    assert sum(seen_test(counts)) == GPU_TEST_IMAGES_EVALUATED == 1200
