"""Learners run one task at a time for the task loop. ``LightningLearner`` is the engine's own.

The loop (``engine/loop.py``) only talks to this small protocol, so the Avalanche strategies plug into the same
resume, results and checkpoint logic through their own learner.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader

from recast_bench.config import TrainerConfig
from recast_bench.data.stream import Task
from recast_bench.engine.checkpoint import load_tensors, save_tensors, tensor_metadata
from recast_bench.engine.compile import compile_backbone, compiled
from recast_bench.engine.device import apply_profile, to_channels_last
from recast_bench.engine.evaluate import EvalSetup, predict, shard_for_rank
from recast_bench.engine.features import TaskInputs, eval_inputs, feature_cache_for, task_inputs
from recast_bench.engine.method import Method, assign_state
from recast_bench.engine.model import TaskModel, head_key, head_prefix, split_head
from recast_bench.engine.module import TaskModule, count
from recast_bench.engine.timing import StepTimer
from recast_bench.errors import UserError
from recast_bench.perf.common import sync
from recast_bench.recast.layers import regenerate
from recast_bench.seed import loader_generator, worker_init

STATE_FILE = "state.safetensors"
HEAD_FILE = "head.safetensors"


class Learner(Protocol):
    isolates_tasks: bool

    def fit_task(self, t: int, task: Task) -> dict: ...
    def save_task(self, t: int, task: Task, task_dir: Path) -> dict: ...
    def load_task(self, t: int, task: Task, task_dir: Path) -> None: ...
    def save_shared(self, path: Path) -> None: ...
    def load_shared(self, path: Path) -> None: ...
    def evaluate(self, t: int, task: Task) -> float: ...

    last_predictions: tuple[torch.Tensor, torch.Tensor] | None
    """After :meth:`evaluate`: ``(pred, label)``, CPU int64 in test-set order (``None``: the learner has none)."""
    switch_ms: list[float]
    """Wall milliseconds of every task switch timed during evaluation (empty: the learner times none)."""

    @property
    def compiles(self) -> bool:
        """Whether this session trains and evaluates compiled (results.json's ``compile``)."""
        ...


def make_loader(
    ds,  # noqa: ANN001
    batch_size: int,
    shuffle: bool,
    tcfg: TrainerConfig,
    seed: int,
    persistent: bool | None = None,
) -> DataLoader:
    """A loader with the run's worker settings; ``persistent=False`` for one-pass loaders (test evaluation)."""
    workers = int(tcfg.num_workers or 0)
    keep = bool(tcfg.persistent_workers) if persistent is None else persistent
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        worker_init_fn=worker_init,
        generator=loader_generator(seed),
        persistent_workers=keep and workers > 0,
        pin_memory=bool(tcfg.pin_memory) and torch.cuda.is_available(),
    )


def unfreeze_for_task(model: TaskModel, method: Method, t: int) -> dict[str, torch.nn.Parameter]:
    """The freezing policy: freeze everything, then unfreeze exactly the method's parameters and task ``t``'s head."""
    model.requires_grad_(False)
    params = dict(method.task_parameters(model))
    params.update(method.shared_parameters(model))
    params.update({f"heads.{head_key(t)}.{k}": p for k, p in model.heads[head_key(t)].named_parameters()})
    for p in params.values():
        p.requires_grad_(True)
    return params


def selects(value: float, best: float | None, mode: str) -> bool:
    """Whether an epoch's selection metric replaces the best so far (``mode``: ``max`` or ``min``).

    Ties keep the latest epoch (SELECTION in engine/results.py): a later epoch has trained longer, at the same or a
    lower learning rate, and small val sets tie often (the demo saturates at 100 %). A NaN never wins.
    """
    if value != value:  # NaN
        return False
    if best is None:
        return True
    return value >= best if mode == "max" else value <= best


def trainable_count(method: Method, model: TaskModel) -> int:
    """Per-task learnt backbone numbers, head excluded (:meth:`Method.count_task_params`)."""
    return int(method.count_task_params(model))


@dataclass
class TaskData:
    """One task's training inputs: what Lightning fits on, and the loader the method's data-driven hooks get."""

    inputs: TaskInputs
    train: DataLoader
    val: DataLoader
    hook: DataLoader
    """Model-ready float images for ``on_task_start`` / ``on_task_end`` (RoSA, InfLoRA)."""


class EpochSelection:
    """The epoch selected on val so far (``metric``/``mode``: :meth:`Method.selection`, ties: :func:`selects`),
    with the state ``snapshot()`` took right after its validation."""

    def __init__(self, metric: str, mode: str, snapshot: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.metric = metric
        self.mode = mode
        self._snapshot = snapshot
        self.value: float | None = None
        self.acc: float | None = None
        """The selected epoch's val accuracy, whatever metric selected it."""
        self.epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, metrics: dict[str, float]) -> None:
        """``TaskModule``'s ``on_val``: called after every validation with that epoch's metrics."""
        if selects(metrics[self.metric], self.value, self.mode):
            self.value, self.acc, self.epoch = metrics[self.metric], metrics["val/acc"], epoch
            self.state = self._snapshot()


class LightningLearner:
    """Trains each task with Lightning, selects the epoch on val, and restores a task's state to evaluate it."""

    def __init__(
        self,
        model: TaskModel,
        method: Method,
        tcfg: TrainerConfig,
        seed: int,
        fingerprint: str,
        callbacks_factory=None,
        device: torch.device | None = None,
    ) -> None:  # noqa: ANN001
        self.model = model
        self.method = method
        self.tcfg = tcfg
        self.seed = seed
        self.fingerprint = fingerprint
        self.callbacks_factory = callbacks_factory
        self.isolates_tasks = method.isolates_tasks
        self.device = device or torch.device("cpu")
        apply_profile(tcfg, method.ctx.family)  # a no-op for the loop's already resolved config
        self._states: dict[int, dict[str, torch.Tensor]] = {}
        self._current: int | None = None
        self.features = feature_cache_for(method, model, tcfg)  # linear: backbone features computed once
        self.switch_ms: list[float] = []
        """Wall milliseconds of every task switch made to evaluate (results.json's ``task_switch_ms``)."""

    @property
    def compiles(self) -> bool:
        """Whether training and evaluation run the backbone compiled (``trainer.compile``; not for a head trained on
        cached features)."""
        return bool(self.tcfg.compile) and self.features is None

    # ---- training -------------------------------------------------------------------------------------------
    def trainable(self, t: int) -> dict[str, torch.nn.Parameter]:
        return unfreeze_for_task(self.model, self.method, t)

    def fit_task(self, t: int, task: Task) -> dict:
        """Train task ``t`` (Lightning), restore the epoch selected on val, then the method's ``on_task_end``."""
        m = self.model
        m.active_task = t
        data = self._prepare(t, task)
        trainable = self.trainable(t)
        best = EpochSelection(*self.method.selection(), lambda: self._snapshot(t))
        module = TaskModule(
            data.inputs.model(m), self.method, t, task.name, task.num_classes, trainable, self.tcfg, best.offer
        )
        module.input_transform = data.inputs.transform
        timer = StepTimer()
        callbacks = [timer, *(self.callbacks_factory(t, task) if self.callbacks_factory else [])]
        trainer = self._trainer(callbacks)
        start = time.perf_counter()
        with compiled(m.backbone):  # only training runs compiled (engine/compile.py)
            trainer.fit(module, train_dataloaders=data.train, val_dataloaders=data.val)
        train_s = time.perf_counter() - start
        # Lightning's teardown has moved the module to the CPU: evaluate (and run on_task_end) where it trained.
        self.device = trainer.strategy.root_device
        m.to(self.device)
        if best.state is not None:  # restore the epoch selected on val
            self._restore_snapshot(t, best.state)
        m.requires_grad_(False)
        self.method.on_task_end(m, t, task, data.hook)  # engine/method.py's order: after the best epoch is restored
        self._states[t] = self._task_state(t)
        self._current = t
        return {
            "val_acc": best.acc,  # the selected epoch's val accuracy, whatever metric selected it
            "best_epoch": best.epoch,
            "train_s": train_s,
            "timing": timer.summary(),
            "epochs_wall_s": timer.epochs_wall_s,
            "trainable_params": trainable_count(self.method, m),
            "head_params": count(dict(m.heads[head_key(t)].named_parameters())),
        }

    def _prepare(self, t: int, task: Task) -> TaskData:
        """Task ``t``'s loaders, the method's ``on_task_start``, its head, and the backbone's layout and compilation."""
        m = self.model
        # Lightning's DistributedSampler seeds from PL_GLOBAL_SEED (else 0): under DDP every rank must shuffle
        # with the same seed (the shards partition one permutation), and that seed must be the run's.
        os.environ["PL_GLOBAL_SEED"] = str(self.seed + t)
        inputs = task_inputs(task, t, self.seed, self.features)  # uint8 images or cached features
        train_loader = make_loader(inputs.train, self.tcfg.batch_size, True, self.tcfg, self.seed + t)
        val_loader = make_loader(inputs.val, self.tcfg.eval_batch_size, False, self.tcfg, self.seed)
        # Data-driven hooks (RoSA, InfLoRA) feed the backbone themselves: they get model-ready float images.
        hook_loader = make_loader(task.train, self.tcfg.batch_size, True, self.tcfg, self.seed + t, persistent=False)
        self.method.on_task_start(m, t, task, hook_loader)
        m.add_head(t, task.num_classes)
        if self.tcfg.channels_last:  # after on_task_start and add_head: every conv weight, old and new, is NHWC
            to_channels_last(m)
        if self.compiles:  # a head on cached features has nothing worth compiling
            compile_backbone(m.backbone, str(self.tcfg.compile_backend))
        return TaskData(inputs, train_loader, val_loader, hook_loader)

    def _snapshot(self, t: int) -> dict[str, torch.Tensor]:
        """Task ``t``'s state (and the shared state, for a method that does not isolate tasks) at this epoch."""
        s = {f"task/{k}": v for k, v in self._task_state(t).items()}
        if not self.isolates_tasks:
            s.update({f"shared/{k}": v for k, v in self.method.shared_state(self.model).items()})
        return s

    def _restore_snapshot(self, t: int, snap: dict[str, torch.Tensor]) -> None:
        self._load_task_state(t, {k[5:]: v for k, v in snap.items() if k.startswith("task/")})
        shared = {k[7:]: v for k, v in snap.items() if k.startswith("shared/")}
        if shared:
            self.method.load_shared_state(self.model, shared)

    def _trainer(self, callbacks: list) -> L.Trainer:
        tc = self.tcfg
        with warnings.catch_warnings():
            # Lightning warns that torch ignores cudnn.deterministic under benchmark=True; torch does not (device.py).
            warnings.filterwarnings("ignore", message=".*`deterministic=True` and `benchmark=True`")
            return L.Trainer(
                max_epochs=tc.epochs,
                accelerator=tc.accelerator,
                devices=tc.devices,
                num_nodes=tc.num_nodes,
                strategy=tc.strategy,
                precision=tc.precision,
                deterministic=tc.deterministic,
                benchmark=tc.cudnn_benchmark,  # passed explicitly: Lightning would turn it off under ``warn``
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=bool(tc.progress_bar),
                num_sanity_val_steps=0,
                check_val_every_n_epoch=tc.check_val_every_n_epoch,
                gradient_clip_val=tc.grad_clip,
                callbacks=callbacks,
            )

    # ---- state ----------------------------------------------------------------------------------------------
    def _task_state(self, t: int) -> dict[str, torch.Tensor]:
        state = self.method.task_state(self.model)
        return {**state, **{head_prefix(t) + k: v.detach().clone() for k, v in self._head(t).items()}}

    def _head(self, t: int) -> dict[str, torch.Tensor]:
        return dict(self.model.heads[head_key(t)].state_dict())

    def _load_task_state(self, t: int, state: dict[str, torch.Tensor]) -> None:
        own, head = split_head(state, t)
        self.method.load_task_state(self.model, own)
        assign_state(self.model, head)

    def save_task(self, t: int, task: Task, task_dir: Path) -> dict:
        state = self._states[t]
        meta = {"fingerprint": self.fingerprint, "task": task.name, "task_index": str(t)}
        own, head = split_head(state, t)
        head = {k[len(head_prefix(t)) :]: v for k, v in head.items()}
        n_bytes = save_tensors(task_dir / STATE_FILE, own, meta) if own else 0
        head_bytes = save_tensors(task_dir / HEAD_FILE, head, meta)
        return {"bytes": n_bytes, "head_bytes": head_bytes}

    def load_task(self, t: int, task: Task, task_dir: Path) -> None:
        """Rebuild task ``t``'s head and state from disk (resume); refuses files of another run config."""
        for name in (STATE_FILE, HEAD_FILE):
            f = task_dir / name
            if f.exists() and tensor_metadata(f).get("fingerprint") != self.fingerprint:
                raise UserError(f"{f} was written by a run with another backbone or config; use another --out")
        head = load_tensors(task_dir / HEAD_FILE)
        self.model.add_head(t, int(head["weight"].shape[0]))
        own = load_tensors(task_dir / STATE_FILE) if (task_dir / STATE_FILE).exists() else {}
        try:
            self._load_task_state(t, {**own, **{head_prefix(t) + k: v for k, v in head.items()}})
        except ValueError as e:
            raise UserError(f"checkpoint {task_dir} does not fit this model: {e}") from None
        self._states[t] = self._task_state(t)

    def save_shared(self, path: Path) -> None:
        state = self.method.shared_state(self.model)
        if state:
            save_tensors(path, state, {"fingerprint": self.fingerprint})

    def load_shared(self, path: Path) -> None:
        if path.exists():
            if tensor_metadata(path).get("fingerprint") != self.fingerprint:
                raise UserError(f"{path} was written by a run with another backbone or config; use another --out")
            self.method.load_shared_state(self.model, load_tensors(path))

    # ---- evaluation -------------------------------------------------------------------------------------------
    last_predictions: tuple[torch.Tensor, torch.Tensor] | None = None
    """``(pred, label)`` of the latest :meth:`evaluate`: CPU int64, test-set order (all ranks' shards under DDP)."""

    def switch_to(self, t: int) -> float | None:
        """Make task ``t``'s state current; returns the wall milliseconds it took (``None``: already current).

        Timed from the first state copy to the last regenerated weight, with a device synchronisation at both ends:
        RECAST's weights are generated here, not inside the next forward."""
        if self._current == t:
            return None
        sync(self.device)
        start = time.perf_counter()
        self._load_task_state(t, self._states[t])
        regenerate(self.model.modules())
        sync(self.device)
        self._current = t
        return (time.perf_counter() - start) * 1000.0

    def evaluate(self, t: int, task: Task) -> float:
        self.model.to(self.device)
        ms = self.switch_to(t)
        if ms is not None:
            self.switch_ms.append(ms)
        # Under DDP each rank evaluates its own shard and the counts are summed on the device (no CPU collective).
        test, model, transform = eval_inputs(task, self.model, self.features)
        test, sharded = shard_for_rank(test)
        loader = make_loader(test, self.tcfg.eval_batch_size, False, self.tcfg, self.seed, persistent=False)
        setup = EvalSetup(self.device, self.tcfg.precision, bool(self.tcfg.channels_last), sharded, transform)
        out = predict(model, t, loader, task.num_classes, setup)  # eager: only training runs compiled
        self.last_predictions = (out.pred, out.label)
        return out.acc
