"""The bench slot launcher: one run per free GPU slot (flock), CUDA_VISIBLE_DEVICES per run, a no-op without GPUs."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

SHOW = [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "os.environ.get('RECAST_BENCH_RUNS_PER_NODE'))"]  # fmt: skip


def _slot(tmp_path, visible: str, *args: str, cmd=SHOW) -> str:  # noqa: ANN001
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    env.pop("RECAST_BENCH_RUNS_PER_NODE", None)
    argv = [sys.executable, "-m", "recast_bench.slot", "--dir", str(tmp_path), *args, "--", *cmd]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def _hold(path):  # noqa: ANN001, ANN202
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_takes_a_free_gpu_and_spreads_before_doubling_up(tmp_path):
    assert _slot(tmp_path, "5,7") == "5 2"  # the first GPU's slot is free
    held = _hold(tmp_path / "gpu-5-slot0.lock")  # a run holds GPU 5
    try:
        assert _slot(tmp_path, "5,7") == "7 2"
        assert _slot(tmp_path, "5,7", "--per-gpu", "2") == "7 4"  # a free GPU before a second run on GPU 5
        held2 = _hold(tmp_path / "gpu-7-slot0.lock")
        try:
            assert _slot(tmp_path, "5,7", "--per-gpu", "2") == "5 4"  # then GPU 5's second slot
        finally:
            os.close(held2)
    finally:
        os.close(held)


def test_the_run_holds_its_slot_until_it_exits(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3"}
    cmd = [sys.executable, "-m", "recast_bench.slot", "--dir", str(tmp_path), "--", sys.executable, "-c",
           "import sys, time; print('up', flush=True); sys.stdin.readline()"]  # fmt: skip
    run = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "up"
        fd = os.open(tmp_path / "gpu-3-slot0.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("the slot should be held by the running command")
        except BlockingIOError:
            pass
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.wait(timeout=30) == 0
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed when the run ended
        os.close(fd)
    finally:
        run.kill()


def test_no_gpu_runs_the_command_unchanged(tmp_path):
    assert _slot(tmp_path, "") == "None"  # CUDA_VISIBLE_DEVICES="" hides every GPU
    out = _slot(tmp_path, "-1")
    assert out == "-1 None"  # environment untouched, no slot files
    assert not list(tmp_path.glob("*.lock"))
    assert _slot(tmp_path, "0,1", "--per-gpu", "0") == "0,1 None"  # slots off: a DDP run sees every GPU


def test_slurm_launcher_requeues_on_timeout():
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    from recast_bench.config import CONF_DIR

    own = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), {k: v for k, v in own.items() if k != "defaults"})
    assert cfg.max_num_timeout >= 1 and cfg.signal_delay_s >= 60  # submitit requeues; the run resumes from disk


def test_runs_per_gpu_chosen_from_measured_memory_cpus_and_shm():
    from recast_bench.slot import DEFAULT_RUNS_PER_GPU, MAX_RUNS_PER_GPU, choose

    gib = 2**30
    check = {"preflight": {"gpu_mem_gb": 80.0}, "cost_inputs": {"vit": {"peak_gpu_mem_mb": 6000.0}}}
    assert choose(1, "vit_small", check, 16, 32 * gib)[0] == MAX_RUNS_PER_GPU  # 8.3 GB per run: memory allows 8
    big = {**check, "cost_inputs": {"vit": {"peak_gpu_mem_mb": 30000.0}}}
    k, why = choose(1, "vit_small", big, 16, 32 * gib)
    assert k == 1 and "37.4 GB per run (measured peak)" in why  # 30000 MB x 1.25 + 800 MB; 0.9 x 80 GB holds one
    assert choose(1, "resnet34", check, 16, 32 * gib)[0] == DEFAULT_RUNS_PER_GPU  # resnet not measured: modelled
    assert choose(8, "vit_small", check, 32, 32 * gib)[0] == 1  # 4 CPUs per GPU: one run with 2 workers + itself
    assert choose(1, "vit_small", check, 16, 64 * 2**20)[0] == 1  # docker's 64 MiB /dev/shm
    assert choose(0, "vit_small", check, 16, None) == (1, "no GPU visible: one run at a time")


def test_choose_prints_runs_per_gpu_and_jobs_for_make(tmp_path):
    check = {"device": {"type": "cuda"}, "preflight": {"gpu_mem_gb": 80.0},
             "cost_inputs": {"vit": {"peak_gpu_mem_mb": 6000.0}}}  # fmt: skip
    (tmp_path / "gc.json").write_text(json.dumps(check))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    argv = [sys.executable, "-m", "recast_bench.slot", "--choose", "--check", str(tmp_path / "gc.json"), "--explain"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    k = int(out.stdout.split()[0])
    assert out.stdout.split() == [str(k), str(2 * k)] and "runs per GPU" in out.stderr
    out = subprocess.run([*argv, "--per-gpu", "0"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["0", "1"]  # slots off: one DDP run at a time over every GPU


def test_nvidia_smi_is_asked_in_one_place_with_one_failure_rule(tmp_path, monkeypatch):
    """perf/smi.py serves the slot launcher (GPU count, smallest card) and gpu-check's preflight (details): a fake
    nvidia-smi answering by query, then one that fails; without torch being needed."""
    from recast_bench import slot
    from recast_bench.perf import smi

    exe = tmp_path / "nvidia-smi"
    exe.write_text(
        '#!/bin/sh\ncase "$1" in\n'
        "  --query-gpu=name) printf 'NVIDIA H100\\nNVIDIA H100\\n' ;;\n"
        "  --query-gpu=memory.total) printf '81559\\n40960\\n' ;;\n"
        "  *) printf 'NVIDIA H100, 580.1, 81559 MiB, 9.0\\n' ;;\nesac\n"
    )
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    smi._SMI_GPUS.clear()
    assert slot.visible_gpus() == ["0", "1"] and slot.card_mb({}) == 40960.0
    assert smi.gpu_details() == [
        {"name": "NVIDIA H100", "driver_version": "580.1", "memory.total": "81559 MiB", "compute_cap": "9.0"}
    ]
    exe.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'; exit 9\n")
    assert slot.card_mb({}) is None and smi.gpu_details().startswith("nvidia-smi exit 9")
    assert slot.card_mb({"preflight": {"gpu_mem_gb": 80}}) == 80 * 1024
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert smi.gpu_names() == [] and smi.gpu_details() == "nvidia-smi not found" and slot.visible_gpus() == []
