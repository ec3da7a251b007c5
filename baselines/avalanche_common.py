"""Adapter running avalanche-lib 0.6 strategies over our task stream, backbone and results schema.

* The stream becomes an ``nc_benchmark`` with task labels and one experience per task. Labels are offset globally
  (task t owns classes ``[offset_t, offset_t + n_t)``) because avalanche's replay buffers are keyed by class label:
  with labels restarting at 0, class 0 of every task would share one bucket.
* The network is a ``MultiTaskModule``: our backbone and a ``MultiHeadClassifier`` whose heads are all
  ``total_classes`` wide with per-task unit masking. Equal widths let mixed-task replay batches (DER, ER-ACE,
  GDumb) be concatenated, and DER's stored logits have one shape.
* Accuracy is the engine's: ``recast_bench.engine.evaluate.predict`` on the task's test split through a view that
  returns the task's own head, i.e. the logits of its classes only (task-IL).
* Execution (issue 13): the run's device with its index, its loader workers, pinning and persistent workers
  (``strategy.train`` passes them to avalanche's loaders; ER-ACE's replay loader, which avalanche builds without
  workers, is rebuilt with them in ``avalanche_strategies.py``), bf16 autocast through :class:`AutocastPlugin`
  (avalanche 0.6 has no mixed precision of its own and no loss scaler, so ``16-mixed`` is refused), TF32 and
  determinism as the profile sets them. Not honoured: ``trainer.grad_clip`` (avalanche has no clipping hook
  before its optimizer step), ``devices>1``/DDP (refused), and DER's logit pass after each experience and GDumb's
  buffer run in fp32 (outside the forward hooks).
* Inputs: EWC, LwF and L2P train on uint8 squares finished on the device, GDumb, DER++ and ER-ACE on the float
  CPU path (their batches mix tasks); every evaluation runs on the uint8 device path (``avalanche_device.py``).
* Resume: the whole strategy state (network, heads, regulariser state, replay buffers as sample ids + weights +
  logits) goes to safetensors, with the rest as JSON in its metadata; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from baselines.avalanche_device import DeviceFinishPlugin, uses_device_path
from recast_bench.data.device_transforms import DeviceAugment
from recast_bench.data.stream import Task
from recast_bench.engine.checkpoint import load_tensors, save_tensors, tensor_metadata
from recast_bench.engine.device import apply_profile, autocast_dtype
from recast_bench.engine.evaluate import EvalSetup, Predictions, predict
from recast_bench.engine.learner import make_loader
from recast_bench.engine.module import lr_step_size
from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.config import TrainerConfig
    from recast_bench.engine.model import TaskModel

HEAD_FILE = "head.safetensors"
STATE_KEY = "avalanche_state"


# ---- data ------------------------------------------------------------------------------------------------------
def dataset_targets(ds: Dataset) -> list[int]:
    """Labels of ``ds`` without decoding images when the dataset exposes them (``targets``, ``labels``, tensors)."""
    if isinstance(ds, Subset):
        parent = dataset_targets(ds.dataset)
        return [parent[i] for i in ds.indices]
    if isinstance(ds, TensorDataset):
        return [int(y) for y in ds.tensors[1].tolist()]
    for attr in ("targets", "labels"):
        ys = getattr(ds, attr, None)
        if ys is not None and len(ys) == len(ds):  # type: ignore[arg-type]
            return [int(y) for y in ys]
    return [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]


class WithTargets(Dataset):
    """Our ``(tensor, label)`` dataset plus the ``targets`` list avalanche requires."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.targets = dataset_targets(ds)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.ds[i]
        return x, int(y)


def make_experiences(tasks: list[Task], uint8: bool = False) -> list[Any]:
    """One task-labelled training experience per task, classes offset globally, each sample tagged with a uid.

    The ``uid`` data attribute (not returned by ``__getitem__``) survives avalanche's subset/concat, so a replay
    buffer can be written as sample ids and rebuilt from the same experiences on resume. ``uint8``: the samples are
    the tasks' uint8 squares (``Task.uint8``), finished on the device (``baselines/avalanche_device.py``).
    """
    for task in tasks:
        got = sorted(set(dataset_targets(task.train)))
        if got != list(range(task.num_classes)):
            raise UserError(
                f"task {task.name!r}: avalanche needs every class in train, found {len(got)} of {task.num_classes}"
            )
    split = (lambda t, name: t.uint8(name)) if uint8 else getattr
    bench = nc_benchmark(
        [WithTargets(split(t, "train")) for t in tasks],
        [WithTargets(split(t, "test")) for t in tasks],
        n_experiences=len(tasks),
        task_labels=True,
        one_dataset_per_exp=True,
        shuffle=False,
        class_ids_from_zero_in_each_exp=False,  # global ids: buffers must not merge classes of different tasks
    )
    exps, start = [], 0
    for exp in bench.train_stream:
        n = len(exp.dataset)
        exp.dataset = exp.dataset.update_data_attribute("uid", torch.arange(start, start + n))
        exps.append(exp)
        start += n
    return exps


# ---- model -----------------------------------------------------------------------------------------------------
class MultiHeadNet(MultiTaskModule):
    """Our backbone under avalanche's ``MultiHeadClassifier``; every head spans all classes, masked per task."""

    def __init__(self, backbone: nn.Module, num_features: int, total_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = MultiHeadClassifier(num_features, initial_out_features=total_classes, masking=True)
        # Mixed-task batches are written into a [B, max_class_label] tensor; every head is this wide.
        self.max_class_label = total_classes
        self.finisher: weakref.ref | None = None
        """The device path's :class:`~baselines.avalanche_device.DeviceFinishPlugin`, weakly (a deep copy, e.g.
        LwF's teacher, shares it instead of copying the stream)."""

    def forward(self, x: torch.Tensor, task_labels: Any) -> torch.Tensor:
        """Logits of every sample under its own task's head, the backbone run once over the whole batch.

        avalanche's ``MultiTaskModule.forward`` runs the whole network once per task present in the batch. With a
        shared backbone that is one backbone pass per task in every mixed replay batch (GDumb, DER++, ER-ACE), and
        on a ResNet training its BatchNorms on each task's slice alone: a task with a single sample in the batch
        stops the run ("Expected more than 1 value per channel when training"). Ours, flagged: one pass, so BN sees
        the whole batch, as a single forward of the concatenated batch does in the DER++ and ER-ACE papers' code
        (mammoth); the heads still apply per task. Identical for single-task batches.
        """
        plugin = self.finisher() if self.finisher is not None else None
        if plugin is not None and x.dtype == torch.uint8:  # raw training samples (EWC's importance pass)
            x = plugin.finish(x)
        if task_labels is None or isinstance(task_labels, int):
            return super().forward(x, task_labels)
        feats = self.backbone(x)
        out = torch.zeros(x.shape[0], self.max_class_label, device=x.device)
        for t in torch.unique(task_labels).tolist():
            mask = task_labels == t
            out[mask] = self.classifier.forward_single_task(feats[mask], int(t)).float()
        return out

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        # fp32 logits: avalanche writes mixed-task outputs into an fp32 tensor, which refuses bf16 under autocast.
        return self.classifier.forward_single_task(self.backbone(x), task_label).float()

    def forward_all_tasks(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        # LwF asks every head for every sample: compute the features once, not once per head.
        feats = self.backbone(x)
        return {t: self.classifier.forward_single_task(feats, t).float() for t in self.known_train_tasks_labels}


class TaskView(nn.Module):
    """A ``model(x, t)`` callable giving task t's own logits, so the engine's ``accuracy`` applies unchanged."""

    def __init__(self, logits: Callable[[torch.Tensor, int], torch.Tensor], modules: list[nn.Module], span: tuple):
        super().__init__()
        self.logits = logits
        self.parts = nn.ModuleList(modules)  # so eval()/train() reach the strategy's networks
        self.offset, self.n = span
        self.active_task = 0

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.logits(x, t)[:, self.offset : self.offset + self.n]


def quiet_evaluator() -> EvaluationPlugin:
    """No metrics, no loggers: accuracy is ours, progress lines are the loop's (no InteractiveLogger spam)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])


class AutocastPlugin(SupervisedPlugin):
    """Mixed precision for avalanche's training step: autocast from before the forward pass (the replay forward of
    ER-ACE included) through the loss and the plugins' extra losses, off again before the backward pass. Appended
    last, so the regularisers' own forwards (LwF's teacher) run under it too. bf16 only: it needs no loss scaler.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.device_type, self.dtype = torch.device(device).type, dtype
        self._ctx: torch.autocast | None = None

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._exit()
        self._ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self._ctx.__enter__()

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._exit()

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._exit()  # never leave autocast on past the loop (e.g. an epoch whose last step broke out early)

    def _exit(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


def check_precision(tcfg: TrainerConfig, name: str) -> torch.dtype | None:
    """The autocast dtype avalanche runs with; refuses what it cannot honour."""
    precision = str(tcfg.precision)
    if precision in ("32-true", "32", "bf16-mixed"):
        return autocast_dtype(precision)
    raise UserError(
        f"{name} runs on avalanche, which supports trainer.precision=32-true or bf16-mixed, not {precision}"
    )


def set_determinism(deterministic: bool | str) -> None:
    """What Lightning's Trainer sets for ``deterministic``, for avalanche runs (which build no Trainer)."""
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
    else:
        torch.use_deterministic_algorithms(False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():  # restores the filters and showwarning on exit
        warnings.simplefilter("ignore")
        # avalanche's @deprecated inserts its own "once" filter on every call; drop what it emits here.
        warnings.showwarning = lambda *args, **kwargs: None
        logging.getLogger("avalanche").setLevel(logging.ERROR)
        yield


# ---- learner -----------------------------------------------------------------------------------------------------
class AvalancheLearner:
    """The loop's learner protocol (see ``recast_bench/engine/learner.py``) over one avalanche strategy."""

    def __init__(self, method: Any, model: TaskModel, tasks: list[Task], tcfg: TrainerConfig, seed: int, fp: str):
        from baselines.avalanche_strategies import adapter_for

        devices = tcfg.devices if isinstance(tcfg.devices, int | str) else len(tcfg.devices)
        if str(devices) not in ("1", "auto") or tcfg.num_nodes != 1 or "ddp" in str(tcfg.strategy):
            raise UserError(f"{method.name} runs avalanche on one device; use trainer.devices=1 and no ddp strategy")
        apply_profile(tcfg, method.ctx.family)  # a no-op for the loop's already resolved config
        self.amp_dtype = check_precision(tcfg, method.name)
        set_determinism(tcfg.deterministic)
        self.method, self.cfg, self.tcfg, self.seed, self.fingerprint = method, method.cfg, tcfg, seed, fp
        self.tasks = tasks
        self.isolates_tasks = False
        self.device = torch.device(method.ctx.device)
        self.sizes = [t.num_classes for t in tasks]
        self.offsets = [sum(self.sizes[:t]) for t in range(len(tasks))]
        self.total_classes = sum(self.sizes)
        self.backbone = model.backbone
        self.num_features = model.num_features
        self.done = 0
        self.device_path = uses_device_path(method.name, tasks)
        """Training batches travel as uint8 and are finished on the device (``baselines/avalanche_device.py``)."""
        self.last_predictions: tuple[torch.Tensor, torch.Tensor] | None = None
        """After :meth:`evaluate`: ``(pred, label)``, CPU int64 in test-set order."""
        self.switch_ms: list[float] = []
        """One network for every task: no task switch to time (results.json's ``task_switch_ms`` stays null)."""
        self.compiles = False
        """avalanche trains eagerly (``trainer.compile`` is not honoured; recorded as false)."""
        with quiet():
            self.exps = make_experiences(tasks, uint8=self.device_path)
            self.uid_starts = [int(e.dataset.uid[0]) for e in self.exps]
            self.adapter = adapter_for(method.name)
            self.strategy = self.adapter.build(self)
            if self.device_path:  # first: every other plugin and the forward see the finished batch
                finish = DeviceFinishPlugin(tasks, seed)
                self.strategy.plugins.insert(0, finish)
                if isinstance(self.strategy.model, MultiHeadNet):
                    self.strategy.model.finisher = weakref.ref(finish)
            if self.amp_dtype is not None:
                self.strategy.plugins.append(AutocastPlugin(self.device, self.amp_dtype))

    # ---- what strategies share ----------------------------------------------------------------------------------
    def strategy_kwargs(self) -> dict:
        """Arguments every strategy gets; ``eval_mb_size`` always explicit (DER/ER-ACE/L2P default to 1)."""
        return {
            "train_mb_size": self.tcfg.batch_size,
            "train_epochs": self.tcfg.epochs,
            "eval_mb_size": self.cfg.eval_mb_size or self.tcfg.eval_batch_size,
            "device": self.device,
            "evaluator": quiet_evaluator(),
            "eval_every": -1,
        }

    def loader_kwargs(self) -> dict[str, Any]:
        """The run's loader settings, as avalanche's ``train(**kwargs)`` passes them to its data loaders."""
        workers = int(self.tcfg.num_workers or 0)
        return {
            "num_workers": workers,
            "pin_memory": bool(self.tcfg.pin_memory) and self.device.type == "cuda",
            "persistent_workers": bool(self.tcfg.persistent_workers) and workers > 0,
        }

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, weight_decay=c.weight_decay)

    def plugins(self, optimizer: torch.optim.Optimizer) -> list:
        if not self.cfg.lr_schedule:
            return []
        from avalanche.training.plugins import LRSchedulerPlugin

        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step_size(self.tcfg), gamma=self.tcfg.lr_gamma)
        return [LRSchedulerPlugin(sched, reset_scheduler=True, reset_lr=True)]

    def multihead_net(self) -> MultiHeadNet:
        net = MultiHeadNet(self.backbone, self.num_features, self.total_classes)
        net.requires_grad_(True)  # full-network baselines: the backbone trains with the heads
        return net

    def subset_by_uid(self, uids: list[int]) -> Any:
        """The samples with these uids, in this order, as a subset of the tagged experiences."""
        parts, run, run_exp = [], [], None
        for u in uids:
            e = max(i for i, s in enumerate(self.uid_starts) if s <= u)
            if run and e != run_exp:
                parts.append(self.exps[run_exp].dataset.subset(run))
                run = []
            run_exp = e
            run.append(u - self.uid_starts[e])
        if run:
            parts.append(self.exps[run_exp].dataset.subset(run))
        ds = parts[0]
        for p in parts[1:]:
            ds = ds.concat(p)
        return ds

    # ---- protocol -------------------------------------------------------------------------------------------------
    def fit_task(self, t: int, task: Task) -> dict:
        if t != self.done:
            raise RuntimeError(f"avalanche learner expected experience {self.done}, got {t}")
        start = time.perf_counter()
        with quiet():
            # A fresh optimizer state per experience, as the engine does per task (and what makes resume exact).
            self.strategy.train(self.exps[t], eval_streams=[], reset_optimizer_state=True, **self.loader_kwargs())
        train_s = time.perf_counter() - start
        self.done = t + 1
        val = self._predict(t, task, "val").acc
        return {
            "val_acc": val,
            "best_epoch": self.tcfg.epochs - 1,  # avalanche trains a fixed number of epochs, no selection
            "train_s": train_s,
            "trainable_params": self.adapter.trainable_params(self.strategy),
            "head_params": task.num_classes * (self.adapter.head_in_features(self.strategy) + 1),
        }

    def head_state(self, t: int) -> dict[str, torch.Tensor]:
        w, b = self.adapter.head_weights(self.strategy, t)
        o, n = self.offsets[t], self.sizes[t]
        return {"weight": w[o : o + n].detach().clone(), "bias": b[o : o + n].detach().clone()}

    def save_task(self, t: int, task: Task, task_dir: Path) -> dict:
        # The network is shared (not isolated): per task we store only that task's head rows, as finetune does.
        meta = {"fingerprint": self.fingerprint, "task": task.name, "task_index": str(t)}
        head_bytes = save_tensors(task_dir / HEAD_FILE, self.head_state(t), meta)
        return {"bytes": 0, "head_bytes": head_bytes}

    def load_task(self, t: int, task: Task, task_dir: Path) -> None:
        f = task_dir / HEAD_FILE
        if not f.exists():
            raise UserError(f"{f} is missing; the run cannot resume (use another --out)")
        if tensor_metadata(f).get("fingerprint") != self.fingerprint:
            raise UserError(f"{f} was written by a run with another backbone or config; use another --out")
        head = load_tensors(f)
        if tuple(head["weight"].shape) != (task.num_classes, self.adapter.head_in_features(self.strategy)):
            raise UserError(f"checkpoint {task_dir} does not fit this model")

    def save_shared(self, path: Path) -> None:
        model = self.strategy.model
        tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
        extra, meta = self.adapter.state(self)
        tensors.update(extra)
        info = {"done": self.done, "method": self.method.name, **meta}
        save_tensors(path, tensors, {"fingerprint": self.fingerprint, STATE_KEY: json.dumps(info)})

    def load_shared(self, path: Path) -> None:
        if not path.exists():
            raise UserError(f"{path} is missing; the run cannot resume (use another --out)")
        meta = tensor_metadata(path)
        if meta.get("fingerprint") != self.fingerprint:
            raise UserError(f"{path} was written by a run with another backbone or config; use another --out")
        info = json.loads(meta[STATE_KEY])
        tensors = load_tensors(path)
        self.done = int(info["done"])
        with quiet():
            self.adapt(self.strategy.model, self.done)
            model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
            self.strategy.model.load_state_dict(model_state, strict=True)
            self.strategy.model.to(self.device)
            self.strategy.clock.train_exp_counter = self.done  # EWC indexes its penalties by this counter
            self.adapter.load_state(self, tensors, info)

    def adapt(self, model: nn.Module, n: int) -> None:
        """Grow ``model`` (heads, unit masks, known tasks) as training on the first ``n`` experiences did."""
        was = model.training
        model.train()  # avalanche only marks units active in training mode
        for e in range(n):
            avalanche_model_adaptation(model, self.exps[e])
        model.train(was)

    def _predict(self, t: int, task: Task, split: str) -> Predictions:
        """Task ``t``'s ``split`` through its own head: uint8 squares finished on the device when the stream has
        them (every strategy: the evaluation loop is ours), else the split's model-ready tensors."""
        parts = self.adapter.eval_modules(self.strategy)
        view = TaskView(lambda x, j: self.adapter.logits(self.strategy, x, j), parts, (self.offsets[t], self.sizes[t]))
        view.eval()  # predict() restores this mode afterwards: keep the networks in eval
        tf, ds = task.batch_transform, task.uint8(split)
        loader = make_loader(ds, self.tcfg.eval_batch_size, False, self.tcfg, self.seed, persistent=False)
        for m in parts:
            m.to(self.device)
        setup = EvalSetup(self.device, self.tcfg.precision, transform=DeviceAugment(tf, 0) if tf is not None else None)
        return predict(view, t, loader, task.num_classes, setup)  # type: ignore[arg-type]

    def evaluate(self, t: int, task: Task) -> float:
        res = self._predict(t, task, "test")
        self.last_predictions = (res.pred, res.label)
        return res.acc
