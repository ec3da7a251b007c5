"""The GPU profile's code on a CPU: every bench row of both paper tables, and compiled training against eager.

Every row of ``python -m recast_bench.protocol list --backbone resnet34`` and ``--backbone vit_small`` runs on the
tiny backbone of its family (2 synthetic tasks, 1 epoch) with ``trainer.profile=gpu`` and every setting of that
profile a CPU can honour on: bf16-mixed autocast, channels_last (ResNet rows), ``deterministic=warn``, persistent
loader workers (one per loader), ``torch.compile`` of the training step, and the bench slot launcher. The two tables
run as two processes, each launched by ``python -m recast_bench.slot`` onto one of two slots of a (pretend) GPU 0,
each running its rows in-process (tests/gpu_profile_rows.py), side by side on the two cores. While they run, this
process checks compiled against eager training with inductor itself.

Compile backend of the row suite: ``aot_eager``, which does what inductor does before code generation (Dynamo
capture with its guards and graph breaks, AOTAutograd's joint forward/backward graph and functionalisation) and
then runs eager kernels. Measured here (2-core CPU, torch 2.14.1, cold caches): the first inductor compile of a
training graph costs 20-45 s of CPU on these backbones (C++ code generation and gcc), against 4-6 s for
``aot_eager``; 22 compiled rows under inductor would alone exceed CI's budget. Inductor is tested below on
one-block backbones of each family.

Settings of the GPU profile that exist only on CUDA are listed in :data:`CUDA_ONLY`, with the reason; what the
Avalanche rows (which do not train through the Lightning step) get of the profile is :data:`AVALANCHE_PROFILE`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from recast_bench.protocol.cards import bench_rows

CUDA_ONLY = {
    "pin_memory": "page-locked host buffers need the CUDA host allocator (make_loader pins only with CUDA present)",
    "tf32": "matmul_precision=high / cudnn.allow_tf32 select TF32 tensor-core kernels, which exist only on GPUs",
    "cudnn_benchmark": "cuDNN autotuning (set here too: torch.backends.cudnn.benchmark, a no-op without cuDNN)",
    "cuda_events": "timing's img_s_device uses CUDA events on a GPU, perf_counter here (engine/timing.py)",
    "non_blocking": "asynchronous host-to-device copies (a plain copy without a device)",
    "triton": "inductor's GPU code generation (inductor's CPU code generation is tested below)",
    "nccl": "DDP's GPU collectives (DDP itself runs on CPUs with gloo: trainer=ddp_cpu)",
    "gpu_memory": "peak_gpu_mem_mb (None here) and the GPU slot's CUDA_VISIBLE_DEVICES taking effect",
}
AVALANCHE_PROFILE = """What the Avalanche rows get of the profile (baselines/avalanche_common.py): bf16 autocast,
deterministic=warn, TF32 and cuDNN autotuning (process flags), persistent loader workers, the uint8 device path where
avalanche allows it, and the slot launcher. They do not train through the Lightning step: no torch.compile
(results.json says ``compile: false``), no channels_last, and ``timing`` holds what their learner measures (or null)."""

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("resnet34", "vit_small")
ROWS = [(bb, card.id) for bb in TABLES for card in bench_rows(bb)]
AVALANCHE = {"ewc", "lwf", "gdumb", "er-ace", "derpp", "l2p"}
UNCOMPILED = AVALANCHE | {"linear"}  # linear trains its head on cached features: nothing to compile
BATCH, STEPS, TASKS = 4, 3, 2  # tests/gpu_profile_rows.py: 12 training images per task, batch 4


@pytest.fixture(scope="module")
def tables_started(tmp_path_factory):
    """Start one slot-launched process per table (they run while the inductor tests below use this process)."""
    root = tmp_path_factory.mktemp("profile_rows")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "0",  # the slot launcher's GPU path: both runs get a slot of "GPU 0"
        "RUNS_PER_GPU": "2",
    }
    procs = {}
    for bb in TABLES:
        out = root / bb
        out.mkdir()
        driver = [sys.executable, str(ROOT / "tests" / "gpu_profile_rows.py"), "--backbone", bb, "--out", str(out)]
        cmd = [sys.executable, "-m", "recast_bench.slot", "--per-gpu", "2", "--dir", str(root / "slots"), "--", *driver]
        log = open(out / "log.txt", "w")  # noqa: SIM115 (closed when the process is collected)
        procs[bb] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), out, log)
    yield procs
    for proc, _, log in procs.values():
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def tables(tables_started):
    """Wait for both tables; ``{table: rows.json}``."""
    done = {}
    for bb, (proc, out, log) in tables_started.items():
        proc.wait(timeout=900)
        log.flush()
        tail = (out / "log.txt").read_text()[-3000:]
        assert proc.returncode == 0 and (out / "rows.json").exists(), f"{bb} table process failed:\n{tail}"
        done[bb] = {**json.loads((out / "rows.json").read_text()), "dir": out}
    return done


# ---- compiled against eager, with inductor --------------------------------------------------------------------------
def _one_block_backbone(family: str) -> tuple[torch.nn.Module, int]:
    """The smallest backbones RECAST applies to: one ViT block; a ResNet with one stage of two blocks."""
    from timm.models.vision_transformer import VisionTransformer

    from recast_bench.backbones.resnet import NarrowResNet, as_feature_extractor

    if family == "vit":
        vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, num_classes=0)
        return vit, 48
    return as_feature_extractor(NarrowResNet([1, 2, 1, 1], (8, 8, 8, 8))), 8


def _train(method_name: str, family: str, compile_: bool, perturb: float = 0.0) -> dict[str, torch.Tensor]:
    """One task, one epoch of the engine's real training (LightningLearner, fp32); the trained task state."""
    from omegaconf import OmegaConf

    from recast_bench.config import TrainerConfig
    from recast_bench.data.synthetic import synthetic_task
    from recast_bench.engine.build import build_method
    from recast_bench.engine.learner import LightningLearner
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel
    from recast_bench.seed import seed_everything

    seed_everything(0)
    backbone, features = _one_block_backbone(family)
    method = build_method(method_name, OmegaConf.create({"recast": {"variant": "svd", "cache": False}}), family)
    method.ctx = RunContext(backbone_name=f"one-block-{family}", family=family, seed=0, image_size=32)
    model = TaskModel(backbone, features)
    method.setup(model)
    tcfg = TrainerConfig(
        accelerator="cpu", epochs=1, batch_size=4, precision="32-true", check_val_every_n_epoch=2,
        compile=compile_, compile_backend="inductor", progress_bar=False,
    )  # fmt: skip
    learner = LightningLearner(model, method, tcfg, 0, "compile-test")
    task = synthetic_task(
        "c", 3, 32, 7, SimpleNamespace(train_per_class=8, val_per_class=1, test_per_class=1, noise=0.6)
    )
    if perturb:  # every training image times (1 + perturb * N(0, 1)): a rounding-sized change of the input
        x, y = task.train.tensors
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        task.train.tensors = (x * (1 + perturb * noise), y)
    seed_everything(1)
    learner.fit_task(0, task)
    assert learner.compiles == compile_
    return learner._states[0]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "family"),
    [("recast+melo", "vit"), ("recast+adaptformer", "vit"), ("recast", "resnet")],
    ids=["recast-mlp+melo-vit", "recast-attn+adaptformer-vit", "recast-resnet"],
)
def test_compiled_training_agrees_with_eager(tables_started, method, family):
    # RECAST on ViT (MLP and attention targets) and ResNet, a LoRA-family method (MeLo) and AdaptFormer, each
    # trained for 6 AdamW steps eagerly and compiled by inductor, from the same start and batches.
    #
    # Tolerance, measured rather than guessed: compiled kernels reassociate float sums, and training amplifies any
    # rounding change. So the same eager training is repeated with its input images perturbed by one part in 1e7
    # (about one fp32 ulp); the compiled run must stay within 10x that spread of the eager one, and in any case within
    # 1e-6 of the largest entry (the fp32 floor over a few steps, where the spread is smaller still). Measured here:
    # ViT compiled-eager 3e-8 to 6e-8 against a spread of 1.5e-8 to 3e-8; the one-stage ResNet, whose BatchNorms
    # see 4 samples at 1x1 resolution, 1.4e-4 against 3.7e-4. A wrong gradient or a stale generated weight moves
    # the state by the learning rate (2e-3) per step.
    import torch._inductor.config as inductor_config

    eager = _train(method, family, False)
    spread = _max_diff(eager, _train(method, family, False, perturb=1e-7))
    # fallback_random: eager's dropout masks (AdaptFormer), so both runs draw the same. vec_isa_ok=False: scalar C++
    # kernels, which skips the vector-ISA probe and halves gcc's work (measured: 58 -> 39 s of CPU for the three
    # models); the graph capture, decompositions, fusion and scheduling under test are the same.
    with inductor_config.patch({"fallback_random": True, "cpp.vec_isa_ok": False}):
        compiled = _train(method, family, True)
    scale = max(float(v.abs().max()) for v in eager.values())
    diff = _max_diff(eager, compiled)
    assert diff <= max(10 * spread, 1e-6 * scale), (diff, spread, scale)


# ---- every bench row ------------------------------------------------------------------------------------------------
def _no_compile_after_second_step(steps: list[list[int]]) -> bool:
    """``steps``: (step index within its task, graphs compiled so far) after every training step of a row. A graph
    compiled at a task's third step means one per step (the first two may add the static and the dynamic one)."""
    assert len(steps) == TASKS * STEPS, steps
    return all(g == before for (i, g), (_, before) in zip(steps[1:], steps[:-1], strict=True) if i >= 2)


def _row(tables, bb: str, row: str) -> tuple[dict, dict]:
    rec = tables[bb]["rows"][row]
    assert rec["rc"] == 0, f"{bb} row {row} failed: {rec['error'] or 'exit ' + str(rec['rc'])}"
    out = tables[bb]["dir"] / "runs" / row
    return rec, json.loads((out / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(("table", "row"), ROWS, ids=[f"{bb}-{row}" for bb, row in ROWS])
def test_bench_row_runs_in_the_gpu_profile(tables, table, row):
    rec, res = _row(tables, table, row)
    assert res["status"] == "complete" and res["schema_version"] == 2
    prof = res["profile"]
    assert prof["name"] == "gpu" and res["precision"] == "bf16-mixed" and prof["deterministic"] == "warn"
    assert prof["num_workers"] == 1 and prof["persistent_workers"] is True and prof["matmul_precision"] == "high"
    assert prof["channels_last"] is (table == "resnet34") and prof["cudnn_benchmark"] is True
    assert res["versions"]["avalanche"] and "git_commit" in res
    # compile: the training step of every Lightning row, with no graph break and no recompile per step
    assert res["compile"] is (row not in UNCOMPILED)
    if res["compile"]:
        assert res["compile_backend"] == "aot_eager" and rec["graphs"] >= 1
        assert not rec["graph_breaks"], rec["graph_breaks"]
        assert _no_compile_after_second_step(rec["steps"]) and rec["graphs"] <= 2 * TASKS, rec["steps"]
    # measured throughput (engine/timing.py): present, finite, consistent
    for timing in res["timing"]:
        if row in AVALANCHE and timing is None:
            continue
        assert timing["warmup_steps"] == 1 and timing["timed_steps"] == STEPS - 1
        assert timing["timed_images"] == timing["timed_steps"] * BATCH
        figures = ("img_s", "img_s_device", "epoch_fixed_s", "val_s", "task_fixed_s", "eval_s")
        assert all(math.isfinite(timing[k]) for k in figures), timing
        assert timing["img_s_device"] >= timing["img_s"] > 0 and timing["eval_s"] > 0 and timing["val_s"] > 0
        assert timing["epoch_fixed_s"] >= -1e-3 and timing["task_fixed_s"] >= timing["eval_s"]
    if row not in AVALANCHE:
        assert res["task_switch_ms"] > 0
    # per-image predictions of the last evaluation: they give the accuracy matrix's last row
    path = tables[table]["dir"] / "runs" / row / "predictions.safetensors"
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"after_task": res["tasks"][-1], "fingerprint": res["fingerprint"]}
        for j, name in enumerate(res["tasks"]):
            pred, label = f.get_tensor(f"pred/{name}"), f.get_tensor(f"label/{name}")
            assert pred.dtype == label.dtype == torch.int16 and len(pred) == len(label) == 3 * 2
            assert 100.0 * float((pred == label).float().mean()) == pytest.approx(res["acc_matrix"][-1][j])


@pytest.mark.slow
def test_the_slot_launcher_ran_both_tables(tables):
    # Both tables went through python -m recast_bench.slot onto the two slots of GPU 0 and ran side by side.
    for bb in TABLES:
        assert tables[bb]["env"] == {"CUDA_VISIBLE_DEVICES": "0", "RECAST_BENCH_RUNS_PER_NODE": "2"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("table", "row"), [("resnet34", "hat"), ("resnet34", "piggyback"), ("resnet34", "recast+piggyback")]
)
def test_hat_scale_and_piggyback_mask_compile_once(tables, table, row):
    # HAT anneals its gate scale s on every batch and Piggyback binarises its mask through a straight-through
    # autograd.Function: neither may recompile per step (a float baked into the graph would).
    rec, _ = _row(tables, "resnet34", row)
    assert rec["graphs"] >= 1 and _no_compile_after_second_step(rec["steps"]), rec["steps"]
    assert rec["graphs"] <= TASKS, "at most one training graph per task"
