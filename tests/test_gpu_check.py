"""``make gpu-check``: the case plan, failure classification, and the whole CPU form (every case must pass)."""

from __future__ import annotations

import json

import pytest

from recast_bench.gpucheck.cases import FAILURE_CLASSES, classify, plan
from recast_bench.gpucheck.runner import fractions, main


def test_plan_covers_both_tables_and_ddp_only_with_two_gpus():
    one = plan(gpus=1, tiny=False)
    names = {c.name for c in one}
    assert "default/vit_small/rosa@sparse_mlp" in names and "default/resnet34/derpp" in names
    assert {"determinism/vit_small/rosa@sparse_mlp", "determinism/vit_small/inflora"} <= names
    assert "eval-device/vit_small/recast" in names and "mimicry/vit_base/recast" in names
    assert not [c for c in one if c.group == "ddp"]
    two = plan(gpus=2, tiny=False)
    assert {c.name for c in two if c.group == "ddp"} == {"ddp/vit_small/linear", "ddp/vit_small/recast"}
    assert all(c.backbone in ("vit_tiny", "resnet_tiny") for c in plan(0, tiny=True))
    rosa = next(c for c in one if c.method == "recast+rosa@sparse_mlp")
    assert rosa.method_name == "recast+rosa" and rosa.variant_overrides() == ["method.rosa.variant=sparse_mlp"]


@pytest.mark.parametrize(
    ("text", "cls"),
    [
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
        {"group": "default", "backbone": "vit_small", "method": "recast", "train_img_s": 4000.0},
        {"group": "default", "backbone": "resnet34", "method": "clr", "train_img_s": 1000.0},
        {"group": "default", "backbone": "vit_small", "method": "melo", "train_img_s": 1.0},
    ]
    ceiling = {"vit_small": {"bf16": 10000.0}, "resnet34": {"bf16": 2000.0, "bf16_channels_last": 4000.0}}
    assert fractions(rows, ceiling) == {"vit_small/recast": 0.4, "resnet34/clr": 0.25}


@pytest.mark.slow
def test_cpu_form_every_case_passes(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    rc = main(["--out", str(out), "--work", str(tmp_path / "work"), "--cpu-form"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    failed = [(r["case"], r.get("failure_class"), r.get("error")) for r in report["cases"] if r["status"] != "pass"]
    assert rc == 0 and not failed, failed
    assert report["device"]["type"] == "cpu" and report["preflight"]["torch"]
    assert len(report["cases"]) == 25 and report["passed"] == 25
    for r in report["cases"]:
        if r["group"] == "mimicry":
            assert r["min_cosine"] is not None and r["mimic_s"] > 0
            continue
        assert r["tasks_done"] == r["tasks"] == 2 and r["exit_code"] == 0 and r["wall_s"] > 0
        assert r["train_img_s"] > 0 and r["peak_rss_mb"] > 0 and r["eval_devices"] == ["cpu"]
    assert {"fp32", "bf16"} <= set(report["ceiling_img_s"]["vit_tiny"])
    assert "bf16_channels_last" in report["ceiling_img_s"]["resnet_tiny"]
    assert "gpu-check: 25 passed, 0 failed" in printed


@pytest.mark.slow
def test_gpu_form_data_is_flowers_and_a_large_cifar10(tmp_path):
    from recast_bench.gpucheck.cases import Case
    from recast_bench.gpucheck.runner import gpu_data, run_overrides, stream_counts

    data = gpu_data(tmp_path)
    assert data[:2] == ["stream=six", "stream.tasks=[flowers102,cifar10]"]
    case = Case("default", "vit_tiny", "recast")  # the GPU form's streams, at the tiny backbone's 32 px
    train, evals = stream_counts(case, run_overrides(case, data, tmp_path), {})
    # flowers: 10 classes x (10 train, 5 val, 10 test); cifar10: 600/class train (10 % held out for val), 100 test
    assert train == 100 + 5400
    assert evals == (50 + 600) + 100 * 2 + 1000
