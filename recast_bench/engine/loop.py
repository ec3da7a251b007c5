"""``run(cfg)``: the task-incremental loop, with resume after the last completed task.

For each task: the method prepares its parameters, Lightning fits on train (epoch selected on val), the task's
state is saved under ``<out>/tasks/<task>/``, then every task seen so far is evaluated on test under its own
restored state. ``results.json`` is rewritten atomically after every task, so a killed run resumes from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recast_bench.backbones import build_backbone, get_spec, num_features
from recast_bench.backbones.registry import BackboneSpec
from recast_bench.config import TrainerConfig
from recast_bench.data.hashes import check_split_hashes, split_hashes
from recast_bench.data.stream import Task, build_stream
from recast_bench.engine.build import build_method
from recast_bench.engine.checkpoint import RunLock, read_json, write_json
from recast_bench.engine.compile import check_compile
from recast_bench.engine.device import (
    apply_profile,
    configure_cublas,
    device_record,
    peak_gpu_mem_mb,
    peak_rss_mb,
    reset_peak_memory,
    run_device,
    set_backend_flags,
)
from recast_bench.engine.faults import failpoint
from recast_bench.engine.learner import Learner, LightningLearner
from recast_bench.engine.logging import (
    EpochMetrics,
    finish_logger,
    log_task_results,
    make_logger,
    require_logger_package,
)
from recast_bench.engine.method import Method, RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.engine.results import (
    PREDICTIONS,
    git_commit,
    new_results,
    package_version,
    selection_record,
    summarise,
    upgrade_results,
    write_predictions,
)
from recast_bench.errors import UserError
from recast_bench.registry import load_all
from recast_bench.seed import seed_everything

RESULTS = "results.json"
SHARED = "shared.safetensors"
# Keys that change how a run is displayed or where it runs, not what it computes.
# The profile's name is not fingerprinted, the values it resolved to are (precision, determinism, TF32...).
# Execution-only settings added later are not fingerprinted either, so runs from before them still resume: compile
# and cuDNN autotuning change results only by float rounding (tests/test_compile.py bounds compile's), like the
# kernel choices of another GPU; and a run must be able to resume eager where compilation is unavailable.
_NOT_FINGERPRINTED = {
    "out", "logger", "progress_bar", "num_workers", "persistent_workers", "pin_memory", "profile", "resolved_profile",
    "compile", "compile_backend", "cudnn_benchmark",
}  # fmt: skip


def fingerprint(cfg: dict) -> str:
    """Hash of everything that determines the results, so a resume never mixes two configurations."""

    def strip(d):  # noqa: ANN001, ANN202
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in _NOT_FINGERPRINTED}
        return d

    return hashlib.sha256(json.dumps(strip(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_peak_memory(res: dict, device: torch.device) -> None:
    """Peak memory measured the same way for every runner (Lightning and Avalanche share this process and device):
    ``peak_gpu_mem_mb`` = torch's peak allocation on the run's CUDA device, ``peak_rss_mb`` = the process's peak
    resident set; ``peak_mem_mb`` (kept for older reports) is the GPU figure on CUDA, else the RSS one."""
    rss = peak_rss_mb()
    gpu = peak_gpu_mem_mb(device)
    res["peak_rss_mb"] = max(float(res.get("peak_rss_mb") or 0.0), rss)
    if gpu is not None:
        res["peak_gpu_mem_mb"] = max(float(res.get("peak_gpu_mem_mb") or 0.0), gpu)
    res["peak_mem_mb"] = res["peak_gpu_mem_mb"] if gpu is not None else res["peak_rss_mb"]


def prepare_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror})") from None


def task_dir(out: Path, name: str) -> Path:
    return out / "tasks" / name


def is_rank_zero() -> bool:
    """Lightning's DDP launcher re-runs this command in each child process; only global rank 0 writes files."""
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")
    if rank is not None:
        return int(rank) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


@dataclass
class RunSetup:
    """Everything a run is built from, checked before the output directory is touched (:func:`run`)."""

    cfg: DictConfig
    plain: dict
    """``cfg`` resolved to plain containers (what results.json records and the fingerprint hashes)."""
    tcfg: TrainerConfig
    spec: BackboneSpec
    method: Method
    out: Path
    fingerprint: str
    tasks: list[Task]
    split_hashes: dict
    """Per task, the SHA-256 of every split it uses (data/hashes.py), computed once per session."""
    backbone: nn.Module
    weights_path: str | None
    image_size: int
    device: torch.device
    rank0: bool
    """Only global rank 0 writes files (DDP)."""
    echo: bool
    """Print progress lines on stderr (rank 0 only)."""

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def name(self) -> str:
        return str(self.cfg.method_name)


def run(cfg: DictConfig, echo: bool = True) -> dict:
    """Run (or resume) one method over one stream; returns the results dict also written to ``results.json``.

    Everything that can fail on bad input (names, values, datasets, weight files) is built before the output
    directory is touched, so a rejected run creates and overwrites nothing.
    """
    configure_cublas()  # before any CUDA work: some methods run GEMMs in setup, before Lightning would set it
    load_all()
    spec = get_spec(cfg.backbone.name)
    tcfg: TrainerConfig = OmegaConf.to_object(cfg.trainer)  # type: ignore[assignment]  (__post_init__ checks it)
    apply_profile(tcfg, spec.family)
    device = run_device(tcfg)  # an unusable GPU stops here, before anything is written
    check_compile(tcfg, device)
    require_logger_package(cfg.logger)  # logger=wandb without wandb: one line, before anything is written
    set_backend_flags(tcfg)
    cfg.trainer = OmegaConf.structured(tcfg)  # the resolved profile is part of the recorded config
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    if tcfg.progress_bar is None:
        tcfg.progress_bar = sys.stderr.isatty()
    method = build_method(cfg.method_name, cfg.method, spec.family)  # validates names and values up front
    out = Path(cfg.out)
    fp = fingerprint(plain)
    rank0 = is_rank_zero()
    prev = read_json(out / RESULTS) if (out / RESULTS).exists() else None
    if prev is not None:
        if prev.get("fingerprint") != fp:
            raise UserError(f"{out} holds a run with another method, backbone or config; use another --out")
        if prev.get("status") == "complete":
            if echo and rank0:
                print(f"{out}: already complete, nothing to do", file=sys.stderr)
            return prev

    seed_everything(int(cfg.seed))
    image_size = cfg.backbone.image_size or spec.image_size
    tasks = build_stream(cfg.stream, image_size=image_size, cache_dir=cfg.paths.cache_dir)
    backbone, spec, weights_path = build_backbone(
        spec.name, cfg.backbone.weights, cfg.paths.weights_dir, cfg.backbone.allow_random_init
    )
    if prev is not None and prev["tasks"] != [t.name for t in tasks]:
        raise UserError(f"{out} holds a run over tasks {prev['tasks']}, not this stream; use another --out")
    hashes = split_hashes(tasks)
    if prev is not None:  # same task names, other files or labels: refused as a changed config is
        check_split_hashes(prev.get("split_hashes"), hashes, out)
    setup = RunSetup(
        cfg=cfg, plain=plain, tcfg=tcfg, spec=spec, method=method, out=out, fingerprint=fp, tasks=tasks,
        split_hashes=hashes, backbone=backbone, weights_path=weights_path, image_size=image_size, device=device,
        rank0=rank0, echo=echo and rank0,
    )  # fmt: skip

    if rank0:
        prepare_out_dir(out)
    lock = RunLock(out) if rank0 else contextlib.nullcontext()
    with lock:
        if rank0 and (out / RESULTS).exists():  # another run may have finished it while we were building
            prev = read_json(out / RESULTS)
        return _run_locked(setup, prev)


def _run_locked(run: RunSetup, prev: dict | None) -> dict:
    model = setup_model(run)
    res = start_results(run, model, prev)
    log = TaskLog(make_logger(run.cfg.logger, run.out, f"{run.name}-{run.spec.name}-s{run.seed}", run.plain)
                  if run.rank0 else None, int(res.get("log_step", 0)))  # fmt: skip
    learner = make_learner(run, model, log)
    compiled = bool(learner.compiles)  # this session's setting, as it is actually used
    res.update({"compile": compiled, "compile_backend": str(run.tcfg.compile_backend) if compiled else None})
    done = int(res["completed_tasks"])
    if done:
        _resume(learner, run.tasks, run.out, done, run.echo)
    for t in range(done, len(run.tasks)):
        train_task(run, learner, res, t, log)
        if run.echo:
            if t == done:  # said once, with the first result (an error before it stays a one-line message)
                print(f"[{run.name}] running on {_where(run, res)}", file=sys.stderr)
            accs = " ".join(f"{a:.1f}" for a in res["acc_matrix"][t][: t + 1])
            print(f"[{run.name}] task {t + 1}/{len(run.tasks)} {run.tasks[t].name}: test acc {accs}", file=sys.stderr)
    return finish_run(run, learner, res, log)


def setup_model(run: RunSetup) -> TaskModel:
    """The task model on the run's backbone, after the method's surgery (the peak memory counts the surgery)."""
    model = TaskModel(run.backbone, num_features(run.backbone))
    run.method.ctx = RunContext(
        backbone_name=run.spec.name,
        family=run.spec.family,
        weights_path=run.weights_path,
        cache_dir=str(run.cfg.paths.cache_dir),
        out_dir=str(run.out),
        seed=run.seed,
        image_size=run.image_size,
        device=str(run.device),  # with its index: each DDP rank and each bench slot works on its own GPU
    )
    reset_peak_memory(run.device)  # the peak covers the method's setup (e.g. Neural Mimicry on the GPU) too
    seed_everything(run.seed)
    run.method.setup(model)
    return model


def start_results(run: RunSetup, model: TaskModel, prev: dict | None) -> dict:
    """A new results dict, or the resumed run's brought up to date for this session."""
    method = run.method
    res = prev or new_results(
        run.name, run.spec.name, run.cfg.stream.name, run.seed, [t.name for t in run.tasks], run.plain,
        fingerprint=run.fingerprint, num_classes=[t.num_classes for t in run.tasks],
        backbone_params=sum(p.numel() for p in model.backbone.parameters()), isolates_tasks=method.isolates_tasks,
        weights=run.weights_path, versions=_versions(), selection=selection_record(*method.selection()),
        git_commit=git_commit(),
    )  # fmt: skip
    upgrade_results(res)  # a run started before schema 2 gains its new keys (null for the tasks it already did)
    res.update(device_record(run.device, run.tcfg))  # where this (possibly resumed) session runs
    res.setdefault("split_hashes", run.split_hashes)  # a run from before split hashes gets them on resume
    return res


class TaskLog:
    """The run's logger and its global step, which continues across tasks (and across a resume: ``log_step``)."""

    def __init__(self, logger: Logger | None, step: int) -> None:
        self.logger = logger
        self.step = step
        self._epochs: EpochMetrics | None = None

    def callbacks(self, t: int, task: Task) -> list:
        """Task ``t``'s Lightning callbacks: one logged row per epoch, numbered on from the last task's."""
        self._epochs = EpochMetrics(self.logger, t, task.name, self.step)
        return [self._epochs]

    def task_done(self, res: dict, rank0: bool) -> None:
        """Log the task's results one step after its last epoch's row."""
        if self._epochs is not None:
            self.step = self._epochs.step
        if rank0:
            log_task_results(self.logger, res, self.step)
        self.step += 1
        res["log_step"] = self.step


def make_learner(run: RunSetup, model: TaskModel, log: TaskLog) -> Learner:
    """The method's own learner (Avalanche) or the engine's."""
    own = run.method.make_learner(model, run.tasks, run.tcfg, run.seed, run.fingerprint)
    if own is not None:
        return own
    return LightningLearner(
        model, run.method, run.tcfg, run.seed, run.fingerprint, callbacks_factory=log.callbacks, device=run.device
    )


def train_task(run: RunSetup, learner: Learner, res: dict, t: int, log: TaskLog) -> None:
    """Fit task ``t``, save its state, test every task seen so far, and record it all in ``results.json``."""
    task = run.tasks[t]
    start = time.perf_counter()
    seed_everything(run.seed + 1000 * (t + 1))  # per-task seed: a resumed run replays exactly
    stats = learner.fit_task(t, task)
    sizes = save_task(run, learner, t)
    preds, eval_s = evaluate_seen(learner, run.tasks, t, res["acc_matrix"][t])
    if run.rank0:  # before results.json: a completed task always has its predictions on disk
        write_predictions(run.out / PREDICTIONS, preds, {"after_task": task.name, "fingerprint": run.fingerprint})
    record_task(res, t, TaskRecord(stats, sizes, learner.switch_ms, time.perf_counter() - start, eval_s))
    record_peak_memory(res, run.device)
    summarise(res)
    log.task_done(res, run.rank0)
    if run.rank0:
        write_json(run.out / RESULTS, res)
        if t > 0:  # the previous shared state is no longer needed to resume
            (task_dir(run.out, run.tasks[t - 1].name) / SHARED).unlink(missing_ok=True)
    failpoint("task_done")


def save_task(run: RunSetup, learner: Learner, t: int) -> dict:
    """Task ``t``'s state and head on disk (rank 0); their sizes in bytes (``None`` on other ranks)."""
    if not run.rank0:
        return {"bytes": None, "head_bytes": None}
    task = run.tasks[t]
    sizes = learner.save_task(t, task, task_dir(run.out, task.name))
    # Shared state is versioned per task: a kill before results.json is rewritten must not leave a shared state
    # newer than the last completed task.
    learner.save_shared(task_dir(run.out, task.name) / SHARED)
    return sizes


def finish_run(run: RunSetup, learner: Learner, res: dict, log: TaskLog) -> dict:
    """After the last task: task-agnostic accuracy once per run (T^2 test passes), then the run is complete."""
    if run.rank0 and "task_agnostic" not in res:
        from recast_bench.deploy.agnostic import evaluate_learner  # deploy imports the engine: imported late

        agnostic = evaluate_learner(learner, run.tasks)  # None for a learner without per-task states (Avalanche)
        if agnostic is not None:
            res["task_agnostic"] = agnostic
    res["status"] = "complete"
    if run.rank0:
        write_json(run.out / RESULTS, res)
        finish_logger(log.logger, res)
    return res


def _where(run: RunSetup, res: dict) -> str:
    gpu = f" ({res['gpu_name']})" if res.get("gpu_name") else ""
    return f"{run.device}{gpu}, profile {run.tcfg.resolved_profile}, precision {run.tcfg.precision}"


def _resume(learner: Learner, tasks: list[Task], out: Path, done: int, echo: bool) -> None:
    """The shared state as it was after the last completed task, then every completed task's own state."""
    learner.load_shared(task_dir(out, tasks[done - 1].name) / SHARED)
    for t in range(done):
        learner.load_task(t, tasks[t], task_dir(out, tasks[t].name))
    if echo:
        print(f"resuming {out} after task {done} of {len(tasks)}", file=sys.stderr)


def evaluate_seen(learner: Learner, tasks: list[Task], t: int, row: list) -> tuple[dict, float]:
    """Test every task seen so far under its own state into ``row``; their predictions and the seconds it took."""
    start = time.perf_counter()
    preds = {}
    for j in range(t + 1):
        row[j] = learner.evaluate(j, tasks[j])
        preds[tasks[j].name] = learner.last_predictions
    return preds, time.perf_counter() - start


@dataclass
class TaskRecord:
    """What one task leaves for results.json besides its accuracies."""

    stats: dict
    """The learner's ``fit_task`` statistics."""
    sizes: dict
    """``save_task``'s bytes (``None`` on ranks that do not write)."""
    switch_ms: list[float] | None
    """Every task switch the learner has timed so far (``None``: it times none)."""
    wall_s: float
    """The task so far, from its fit to its test evaluation."""
    eval_s: float


def record_task(res: dict, t: int, rec: TaskRecord) -> None:
    """Task ``t``'s per-task entries of results.json: the learner's fit statistics, the saved sizes, the measured
    timing and the task switches."""
    stats, sizes = rec.stats, rec.sizes
    res["timing"][t] = task_timing(stats, rec.wall_s, rec.eval_s)
    res["task_switch_ms"] = _mean(rec.switch_ms) or res.get("task_switch_ms")
    res["wall_s"] = float(res["wall_s"]) + rec.wall_s
    res["val_acc"][t] = stats.get("val_acc")
    res["best_epoch"][t] = stats.get("best_epoch")
    res["trainable_params_per_task"][t] = stats["trainable_params"]
    res["head_params_per_task"][t] = stats["head_params"]
    res["bytes_per_task"][t] = sizes["bytes"]
    res["head_bytes_per_task"][t] = sizes["head_bytes"]
    res["train_s_per_task"][t] = stats.get("train_s")
    res["completed_tasks"] = t + 1


def task_timing(stats: dict, task_wall_s: float, eval_s: float) -> dict | None:
    """results.json's ``timing[t]`` (engine/timing.py), completed with the loop's task-level figures."""
    timing = stats.get("timing")
    if timing is None:
        return None
    epochs = stats.get("epochs_wall_s")
    fixed = task_wall_s - epochs if epochs is not None else None
    return {**timing, "task_fixed_s": fixed, "eval_s": eval_s}


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def _versions() -> dict[str, str | None]:
    import lightning
    import timm
    import torchvision

    import recast_bench

    return {
        "recast_bench": recast_bench.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "avalanche": package_version("avalanche-lib"),  # metadata only: importing avalanche is slow and optional
    }
