"""Load a finished run for deployment: the shared backbone plus every task's own state, switchable by task name.

The model is rebuilt exactly as ``recast-bench run`` built it (same seeding order, so a randomly initialised tiny
backbone comes back bit for bit), then the shared state and each task's files are loaded with the run's own
checks (fingerprint). ``LoadedRun.evaluate`` therefore reproduces the run's last row of test accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from recast_bench.errors import UserError

RESULTS = "results.json"


@dataclass
class TaskInfo:
    """What deployment needs to know about one task of the run."""

    index: int
    name: str
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _normalization(task: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:  # noqa: ANN401
    """The task's input normalisation: its own attributes if the data layer sets them, else its eval transform's."""
    from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    source = getattr(task, "batch_transform", None) or task
    mean, std = getattr(source, "mean", None), getattr(source, "std", None)
    if mean is not None and std is not None:
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    ds = task.test
    while ds is not None:
        tf = getattr(ds, "transform", None)
        for op in getattr(tf, "transforms", [tf]):
            if op is not None and hasattr(op, "mean") and hasattr(op, "std"):
                return tuple(float(v) for v in op.mean), tuple(float(v) for v in op.std)
        ds = getattr(ds, "dataset", None)
    return IMAGENET_MEAN, IMAGENET_STD  # the synthetic stream normalises with ImageNet statistics


def _class_names(task: Any) -> list[str]:  # noqa: ANN401
    names = getattr(task, "class_names", None)
    if names is not None and len(names) == task.num_classes:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(task.num_classes)]  # the synthetic stream has no names


class LoadedRun:
    """A finished run's model with every task's state; :meth:`activate` switches task, :meth:`predict` classifies."""

    def __init__(self, run_dir: str | Path, pack: str | Path | None = None) -> None:
        from recast_bench.engine.checkpoint import read_json

        self.dir = Path(run_dir)
        if not (self.dir / RESULTS).is_file():
            raise UserError(f"{self.dir} is not a run directory (no {RESULTS})")
        self.results = res = read_json(self.dir / RESULTS)
        done, total = int(res.get("completed_tasks", 0)), len(res.get("tasks", []))
        if res.get("status") != "complete" or done < total:
            raise UserError(
                f"run {self.dir} is incomplete ({done} of {total} tasks); finish it with the same `recast-bench run` "
                "command first"
            )
        self._build()
        if pack is None:
            self._load_task_dirs()
        else:  # the shared backbone from the run, every task's own state and head from the pack
            from recast_bench.deploy.pack import read_pack
            from recast_bench.engine.loop import SHARED, task_dir

            self.states = read_pack(pack, self)
            self.learner.load_shared(task_dir(self.dir, self.tasks[-1].name) / SHARED)
            for info in self.tasks:
                self.model.add_head(info.index, info.num_classes)
        self.active: int | None = None

    # ---- building -------------------------------------------------------------------------------------------
    def _build(self) -> None:
        from recast_bench.backbones import build_backbone, get_spec, num_features
        from recast_bench.config import TrainerConfig
        from recast_bench.data.stream import build_stream
        from recast_bench.engine.build import build_method
        from recast_bench.engine.learner import LightningLearner
        from recast_bench.engine.method import RunContext
        from recast_bench.engine.model import TaskModel
        from recast_bench.registry import load_all
        from recast_bench.seed import seed_everything

        res = self.results
        load_all()
        cfg = OmegaConf.create(res["config"])
        self.method_name = str(cfg.method_name)
        spec = get_spec(cfg.backbone.name)
        self.backbone_name, self.family = spec.name, spec.family
        method = build_method(cfg.method_name, cfg.method, spec.family)
        if method.runner != "lightning":
            raise UserError(
                f"{self.method_name} runs through avalanche-lib, whose models recast-bench cannot export or load "
                "for prediction; export a task of a recast-bench method instead"
            )
        seed = int(cfg.seed)
        # The same order of random draws as engine.loop.run, so a randomly initialised backbone is rebuilt exactly.
        seed_everything(seed)
        self.image_size = int(cfg.backbone.image_size or spec.image_size)
        tasks = build_stream(cfg.stream, image_size=self.image_size, cache_dir=cfg.paths.cache_dir)
        if [t.name for t in tasks] != list(res["tasks"]):
            raise UserError(f"{self.dir}: the stream now gives tasks {[t.name for t in tasks]}, not {res['tasks']}")
        weights = res.get("weights")
        if weights is None:  # the run used random init: rebuild without picking up a weight file added since
            backbone = spec.build()
        else:
            backbone, _, _ = build_backbone(spec.name, weights, cfg.paths.weights_dir, False)
        model = TaskModel(backbone, num_features(backbone))
        method.ctx = RunContext(
            backbone_name=spec.name, family=spec.family, weights_path=weights, cache_dir=str(cfg.paths.cache_dir),
            out_dir=str(self.dir), seed=seed, image_size=self.image_size, device="cpu",
        )  # fmt: skip
        seed_everything(seed)
        method.setup(model)
        self.model, self.method, self.tasks_data = model, method, tasks
        tcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer))
        self.learner = LightningLearner(model, method, tcfg, seed, res["fingerprint"])
        self.tasks = [
            TaskInfo(i, t.name, t.num_classes, _class_names(t), *_normalization(t)) for i, t in enumerate(tasks)
        ]
        self.by_name = {t.name: t for t in self.tasks}

    def _load_task_dirs(self) -> None:
        from recast_bench.engine.loop import SHARED, task_dir

        names = [t.name for t in self.tasks]
        for name in names:
            if not (task_dir(self.dir, name) / "head.safetensors").is_file():
                raise UserError(
                    f"run {self.dir} is incomplete: {task_dir(self.dir, name) / 'head.safetensors'} missing"
                )
        self.learner.load_shared(task_dir(self.dir, names[-1]) / SHARED)
        for t, data in enumerate(self.tasks_data):
            self.learner.load_task(t, data, task_dir(self.dir, data.name))
        self.states = dict(self.learner._states)

    # ---- tasks ----------------------------------------------------------------------------------------------
    def task(self, name: str) -> TaskInfo:
        if name not in self.by_name:
            raise UserError(f"unknown task {name!r}; this run has: {', '.join(self.by_name)}")
        return self.by_name[name]

    def activate(self, name: str) -> torch.nn.Module:
        """Load task ``name``'s state into the shared model (a no-op when it is already active); returns the model."""
        info = self.task(name)
        if self.active != info.index:
            self.learner._load_task_state(info.index, self.states[info.index])  # as the run's own evaluation does
            self.active = info.index
        self.model.active_task = info.index
        self.model.eval()
        return self.model

    @torch.no_grad()
    def logits(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Logits of preprocessed inputs ``x`` (``[B, 3, S, S]``, normalised) under task ``task``."""
        model = self.activate(task)
        return model(x, self.task(task).index)

    def evaluate(self, task: str) -> float:
        """Test accuracy (%) of ``task`` with its restored state, computed by the run's own evaluation code."""
        info = self.task(task)
        self.learner._states = self.states  # the learner restores from these (a pack's, or the run's files)
        self.learner._current = None
        acc = self.learner.evaluate(info.index, self.tasks_data[info.index])
        self.active = info.index
        return acc

    def predict(
        self,
        images: Any,  # noqa: ANN401
        task: str | list[str],
        top_k: int = 5,
        rule: str = "max_softmax",
    ) -> list:
        """Top-``k`` ``(class name, probability)`` per image; ``task`` is one name or one name per image.

        ``task="auto"`` chooses each image's task by ``rule`` (``max_softmax``, ``min_entropy``, ``max_logit``:
        :mod:`recast_bench.deploy.agnostic`) and gives an ``AutoPrediction`` (``task``, ``score``, ``top``,
        ``scores``) per image. ``images``: a path, a PIL image or a tensor, or a list of them (see
        :mod:`recast_bench.deploy.predict`).
        """
        from recast_bench.deploy.predict import predict

        return predict(self, images, task, top_k, rule)

    def evaluate_agnostic(self, rule: str = "max_softmax") -> dict:
        """Task-agnostic figures over every task's test set (results.json's ``task_agnostic``)."""
        from recast_bench.deploy.agnostic import evaluate_learner

        self.learner._states = self.states  # the learner restores from these (a pack's, or the run's files)
        self.learner._current = None
        self.active = None  # the learner switches the model's state behind activate()'s back
        out = evaluate_learner(self.learner, self.tasks_data, rule)
        assert out is not None  # a LoadedRun always has a LightningLearner (Avalanche runs are refused)
        return out


def load_run(run_dir: str | Path, pack: str | Path | None = None) -> LoadedRun:
    """Load a finished run (``results.json`` + ``tasks/``); with ``pack``, take the task states from a task pack."""
    return LoadedRun(run_dir, pack)
