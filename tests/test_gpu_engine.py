"""GPU-correctness of the engine, shown on the CPU: evaluation device after a fit, cuBLAS environment before method
setup, unusable GPUs, the execution profile, the device record in results.json, DDP sampler seeding, the
non-finite-loss check without per-step syncs, and the cross-node run lock."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torchmetrics.classification import MulticlassAccuracy

from recast_bench.cli import main
from recast_bench.config import TrainerConfig
from recast_bench.engine import device as dev
from recast_bench.engine import learner as learner_mod
from recast_bench.engine import module as module_mod
from recast_bench.engine.checkpoint import RunLock
from recast_bench.engine.evaluate import EvalSetup, accuracy
from recast_bench.errors import UserError
from recast_bench.perf import smi


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_evaluation_runs_on_the_training_device_after_fit(run_args, tmp_path, monkeypatch):
    # Lightning's teardown moves the module to the CPU after every fit. Give the strategy a root device that differs
    # from where teardown leaves the module ("cpu:0" vs "cpu"): evaluation must use the strategy's device.
    root = torch.device("cpu", 0)
    monkeypatch.setattr(SingleDeviceStrategy, "root_device", property(lambda self: root))
    seen = []
    real = learner_mod.predict

    def spy(model, t, loader, n, setup):  # noqa: ANN001, ANN202
        seen.append(setup.device)
        return real(model, t, loader, n, setup)

    monkeypatch.setattr(learner_mod, "predict", spy)
    assert main(run_args("linear", out=tmp_path / "dev")) == 0
    assert len(seen) == 6  # 1 + 2 + 3 evaluations over three tasks
    assert all(d == root for d in seen), seen


def test_cublas_workspace_is_set_before_method_setup(run_args, tmp_path, monkeypatch):
    from baselines.linear import Linear

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    at_setup = []
    monkeypatch.setattr(Linear, "setup", lambda self, model: at_setup.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
    assert main(run_args("linear", out=tmp_path / "cublas")) == 0
    assert at_setup == [":4096:8"]


def test_requested_gpu_without_cuda_is_one_line_error(run_args, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "nogpu"
    assert main(run_args("linear", out=out, extra=["trainer.accelerator=gpu"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0] and "trainer.accelerator=cpu" in err[0]
    assert not out.exists(), "nothing is written for a rejected run"


def test_broken_cuda_is_an_error_even_with_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")

    def broken_randn(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(torch, "randn", broken_randn)
    with pytest.raises(UserError, match=r"CUDA device 0 \(Fake GPU\) is not usable: CUDA error: no kernel image") as e:
        dev.run_device(TrainerConfig(accelerator="auto"))
    assert "\n" not in str(e.value)
    monkeypatch.setenv("LOCAL_RANK", "1")  # DDP rank 1 of devices=[0, 3] uses GPU 3, which is not there
    with pytest.raises(UserError, match="CUDA device 3 requested but only 1 visible"):
        dev.run_device(TrainerConfig(accelerator="gpu", devices=[0, 3]))


def test_local_device_index_follows_lightning():
    assert dev.local_device_index(1, rank=0) == 0
    assert dev.local_device_index(2, rank=1) == 1
    assert dev.local_device_index([2, 3], rank=1) == 3
    assert dev.local_device_index("4,5", rank=0) == 4


def test_profiles_cpu_unchanged_gpu_tuned_and_explicit_settings_win(monkeypatch):
    cpu = TrainerConfig()
    assert dev.apply_profile(cpu, "vit") == "cpu"  # no CUDA here: auto is the CPU profile
    assert (cpu.precision, cpu.num_workers, cpu.deterministic, cpu.matmul_precision) == ("32-true", 0, True, "highest")
    assert cpu.persistent_workers is False and cpu.pin_memory is False and cpu.channels_last is False

    monkeypatch.setattr(dev, "_cpus", lambda: 64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    gpu = TrainerConfig(num_workers=None)
    assert dev.apply_profile(gpu, "resnet") == "gpu"  # auto + CUDA
    assert gpu.precision == "bf16-mixed" and gpu.deterministic == "warn" and gpu.matmul_precision == "high"
    assert gpu.num_workers == 8 and gpu.persistent_workers and gpu.pin_memory and gpu.channels_last  # 64/4 -> cap 8
    vit = TrainerConfig(profile="gpu", precision="32-true", deterministic="true", num_workers=2)
    dev.apply_profile(vit, "vit")
    assert vit.precision == "32-true" and vit.deterministic is True and vit.num_workers == 2
    assert vit.channels_last is False and vit.matmul_precision == "high"
    monkeypatch.setenv(dev.RUNS_PER_NODE_ENV, "32")  # 32 bench runs share the 64 CPUs
    assert dev.default_workers(4) == 2
    with pytest.raises(UserError, match="trainer.profile"):
        dev.apply_profile(TrainerConfig(profile="fast"), "vit")
    with pytest.raises(UserError, match="deterministic"):
        dev.apply_profile(TrainerConfig(deterministic="sometimes"), "vit")


def test_trainer_gpu_yaml_is_bf16_not_fp16():
    from recast_bench.config import compose_config

    cfg = compose_config(["trainer=gpu"])
    assert cfg.trainer.profile == "gpu" and cfg.trainer.precision in (None, "bf16-mixed")
    tcfg = TrainerConfig(**{k: v for k, v in cfg.trainer.items()})
    dev.apply_profile(tcfg, "vit")
    assert tcfg.precision == "bf16-mixed"


def test_results_record_device_precision_profile_and_memory(run_args, tmp_path):
    out = tmp_path / "rec"
    assert main(run_args("linear", out=out)) == 0
    r = _results(out)
    assert r["device"] == "cpu" and r["gpu_name"] is None and r["precision"] == "32-true"
    assert r["profile"]["name"] == "cpu" and r["profile"]["num_workers"] == 0
    assert r["profile"]["deterministic"] is True and r["profile"]["matmul_precision"] == "highest"
    assert r["peak_rss_mb"] > 0 and r["peak_mem_mb"] == r["peak_rss_mb"] and r["peak_gpu_mem_mb"] is None
    assert r["config"]["trainer"]["resolved_profile"] == "cpu" and r["config"]["trainer"]["precision"] == "32-true"


def test_ddp_sampler_seed_comes_from_the_run(run_args, tmp_path, monkeypatch):
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert main(run_args("linear", out=tmp_path / "seed", extra=["seed=7"])) == 0
    assert os.environ["PL_GLOBAL_SEED"] == str(7 + 2)  # the last task's (index 2) loader seed
    loader = torch.utils.data.DataLoader(list(range(10)), shuffle=True)
    assert _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=1).seed == 9


def test_accuracy_counts_on_device_like_torchmetrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 5, generator=g)
    logits[:7] = 0.0  # ties: both take the first arg-max
    y = torch.randint(0, 5, (103,), generator=g)

    class Fixed(torch.nn.Module):
        def forward(self, x, t):  # noqa: ANN001, ANN202
            return logits[x]

    loader = torch.utils.data.DataLoader(list(zip(torch.arange(103), y, strict=True)), batch_size=16)
    ours = accuracy(Fixed(), 0, loader, 5, EvalSetup(torch.device("cpu")))
    ref = MulticlassAccuracy(num_classes=5, average="micro")(logits, y).item() * 100
    assert ours == pytest.approx(ref, abs=1e-4)
    with pytest.raises(ValueError, match="expected 4"):
        accuracy(Fixed(), 0, loader, 4)


def test_nonfinite_loss_named_without_per_step_sync(run_args, tmp_path, capsys, monkeypatch):
    # Pretend the CPU were an accelerator: the flag is read only every FINITE_CHECK_EVERY steps / at epoch end,
    # and the message still names the task, epoch and first bad step.
    calls = []
    real = module_mod.TaskModule._raise_if_nonfinite

    def counted(self):  # noqa: ANN001, ANN202
        calls.append(self.global_step)
        return real(self)

    monkeypatch.setattr(module_mod.TaskModule, "_raise_if_nonfinite", counted)
    monkeypatch.setattr(module_mod, "_sync_is_cheap", lambda device: False)
    extra = ["method.finetune.lr=1e30", "method.finetune.weight_decay=0"]
    assert main(run_args("finetune", out=tmp_path / "nan", extra=extra)) == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "in task 0 (syn0) at epoch 0, step " in err
    assert len(calls) == 1, "one host check at the end of the epoch, not one per step"


# ---- the run lock across nodes -----------------------------------------------------------------------------------
def _write_lock(out, **owner):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps(owner))


def test_lock_records_host_pid_and_heartbeat(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05, stale_s=10)
    with lock:
        first = json.loads(lock.path.read_text())
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
        deadline = time.time() + 5
        while json.loads(lock.path.read_text())["heartbeat"] == first["heartbeat"] and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads(lock.path.read_text())["heartbeat"] > first["heartbeat"], "heartbeat refreshes"
    assert not lock.path.exists()


def test_lock_of_another_node_is_stale_only_by_heartbeat(tmp_path):
    # A live pid number on another host means nothing here; a recent heartbeat does.
    _write_lock(tmp_path, host="node-b", pid=os.getpid() + 1, job=None, heartbeat=time.time())
    with pytest.raises(UserError, match="in use by another run .pid .* on node-b"):
        RunLock(tmp_path).acquire()
    _write_lock(tmp_path, host="node-b", pid=1, job=None, heartbeat=time.time() - 3600)
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["host"] == socket.gethostname()


def test_lock_same_host_dead_pid_and_requeued_job_are_stale(tmp_path, monkeypatch):
    _write_lock(tmp_path, host=socket.gethostname(), pid=999_999, job=None, heartbeat=time.time())
    with RunLock(tmp_path):
        pass
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _write_lock(tmp_path, host="node-c", pid=1, job="4242", heartbeat=time.time())  # this job before its requeue
    with RunLock(tmp_path):
        pass
    _write_lock(tmp_path, host="node-c", pid=1, job="17", heartbeat=time.time())
    with pytest.raises(UserError, match="in use"):
        RunLock(tmp_path).acquire()


def test_gpu_profile_end_to_end_on_the_cpu(run_args, tmp_path):
    # The GPU profile on a method that trains the whole ResNet (shared BN statistics): bf16 autocast (train, val
    # and test), persistent loader workers, deterministic=warn with cuDNN autotuning, TF32 matmul precision,
    # channels_last. Compile is off here: tests/test_gpu_profile_rows.py compiles every bench row.
    out = tmp_path / "gpuprofile"
    extra = ["trainer.profile=gpu", "trainer.num_workers=1", "trainer.epochs=1", "trainer.compile=false"]
    try:
        assert main(run_args("finetune", backbone="resnet_tiny", out=out, extra=extra)) == 0
    finally:  # process-wide settings: leave them as the CPU profile has them
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
    r = _results(out)
    assert r["status"] == "complete" and r["precision"] == "bf16-mixed" and r["profile"]["name"] == "gpu"
    p = r["profile"]
    assert p["deterministic"] == "warn" and p["channels_last"] is True and p["persistent_workers"] is True
    assert p["matmul_precision"] == "high" and p["num_workers"] == 1 and p["cudnn_benchmark"] is True
    assert r["compile"] is False and r["compile_backend"] is None and p["compile"] is False
    assert all(0.0 <= a <= 100.0 for row in r["acc_matrix"] for a in row if a is not None)


def test_cudnn_benchmark_on_unless_determinism_is_demanded(monkeypatch):
    # deterministic=warn (the GPU profile) keeps cuDNN autotuning on: ATen still picks among deterministic
    # algorithms only (engine/device.py); deterministic=true turns it off and refuses it explicitly.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = TrainerConfig()
    dev.apply_profile(gpu, "resnet")
    assert gpu.deterministic == "warn" and gpu.cudnn_benchmark is True and gpu.compile is True
    hard = TrainerConfig(deterministic=True)
    dev.apply_profile(hard, "resnet")
    assert hard.cudnn_benchmark is False
    off = TrainerConfig(deterministic=False)
    dev.apply_profile(off, "vit")
    assert off.cudnn_benchmark is True
    with pytest.raises(UserError, match="cudnn_benchmark=true contradicts trainer.deterministic=true"):
        dev.apply_profile(TrainerConfig(deterministic=True, cudnn_benchmark=True), "vit")
    cpu = TrainerConfig(accelerator="cpu")
    dev.apply_profile(cpu, "vit")
    assert cpu.cudnn_benchmark is False and cpu.compile is False  # the CPU profile: deterministic, eager
    learner_cfg = TrainerConfig(accelerator="cpu", deterministic="warn")
    dev.apply_profile(learner_cfg, "vit")
    try:  # the Trainer gets it explicitly (Lightning alone would turn it off under any truthy deterministic)
        learner_mod.LightningLearner._trainer(type("L", (), {"tcfg": learner_cfg})(), [])
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


# ---- a GPU that nvidia-smi sees but torch cannot use ---------------------------------------------------------------
def _fake_nvidia_smi(tmp_path, monkeypatch, body: str):  # noqa: ANN001, ANN202
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    smi._SMI_GPUS.clear()


def test_nvidia_smi_gpus_lists_names_and_is_empty_when_absent_or_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    smi._SMI_GPUS.clear()
    assert dev.nvidia_smi_gpus() == []
    _fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA H100 80GB HBM3"; echo "NVIDIA H100 80GB HBM3"')
    assert dev.nvidia_smi_gpus() == ["NVIDIA H100 80GB HBM3"] * 2
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho changed\n")
    assert dev.nvidia_smi_gpus() == ["NVIDIA H100 80GB HBM3"] * 2, "cached: asked once per run"
    _fake_nvidia_smi(tmp_path / "b", monkeypatch, "echo 'NVIDIA-SMI has failed'; exit 9")
    assert dev.nvidia_smi_gpus() == []


def test_gpu_seen_by_nvidia_smi_but_not_torch_is_one_line_error(run_args, tmp_path, capsys, monkeypatch):
    # A driver too old for the CUDA 13 wheel: nvidia-smi lists the card, torch.cuda.is_available() is False.
    # accelerator=auto must not quietly take the CPU profile; hiding the GPUs on purpose still runs on the CPU.
    _fake_nvidia_smi(tmp_path, monkeypatch, 'echo "Tesla T4"')
    out = tmp_path / "oldriver"
    assert main(run_args("linear", out=out, extra=["trainer.accelerator=auto"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nvidia-smi lists 1 GPU(s) (Tesla T4) but torch cannot use CUDA" in err[0], err
    assert "driver" in err[0] and "trainer.accelerator=cpu" in err[0]
    assert not out.exists(), "nothing is written for a rejected run"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert dev.run_device(TrainerConfig(accelerator="auto")) == torch.device("cpu")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert dev.run_device(TrainerConfig(accelerator="cpu")) == torch.device("cpu")


# ---- channels_last and the RECAST banks ----------------------------------------------------------------------------
CHANNELS_LAST_RUN = [
    "trainer.channels_last=true", "trainer.precision=bf16-mixed", "trainer.epochs=1", "method.recast.variant=svd",
    "stream.num_tasks=2", "stream.classes_per_task=[3,2]",
]  # fmt: skip


def test_channels_last_recast_resnet_feeds_nhwc_inputs_and_generated_kernels(run_args, tmp_path, monkeypatch):
    # Module.to(memory_format=channels_last) refused the 5-d conv template banks (every RECAST row on ResNet crashed
    # at task 0 in the GPU profile). Every training conv must see an NHWC input and an NHWC kernel, the generated
    # kernels included, so cuDNN gets them as they are instead of converting the weight on every call. recast+piggyback
    # has all three kinds of kernel: plain (stem, block 0, downsample), generated, and generated times a 4-d mask.
    # (Every ResNet row runs with channels_last, compiled, in tests/test_gpu_profile_rows.py.)
    import torch.nn.functional as F

    seen: list[tuple[bool, bool, bool]] = []
    real = F.conv2d

    def spy(x, w, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if torch.is_grad_enabled():
            nhwc = torch.channels_last
            seen.append(
                (x.is_contiguous(memory_format=nhwc), w.is_contiguous(memory_format=nhwc), w.grad_fn is not None)
            )
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    out = tmp_path / "cl"
    assert main(run_args("recast+piggyback", backbone="resnet_tiny", out=out, extra=CHANNELS_LAST_RUN)) == 0
    assert _results(out)["status"] == "complete"
    generated = [s for s in seen if s[2]]
    assert generated, "the generated kernels were not used"
    assert all(x_nhwc for x_nhwc, _, _ in seen), "a conv input is not channels_last"
    assert all(w_nhwc for _, w_nhwc, _ in seen), "a conv kernel (plain or generated) is not channels_last"
