"""Frozen-feature caching: for methods whose backbone is frozen up to the head (``linear``), backbone features are
computed once per backbone and reused across epochs, seeds and runs.

The features of a training image depend only on its flip, so the train split is stored for both flips
(``[N, 2, D]``: unflipped, flipped) and val/test unflipped (``[N, 1, D]``). Training then draws each sample's flip
from the same seeded generator, in the same order, as the image path does (:class:`FeatureAugment`), so the head
sees the same inputs and the results equal training through the backbone up to float rounding.

Files: ``<cache_dir>/features/<task>-<split>-<key>.safetensors``; the key hashes the backbone's weights, the split's
rows (the image cache entries and indices, or the tensors), the device transform and the autocast precision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from recast_bench.data.device_transforms import BatchTransform, DeviceAugment, flip_seed
from recast_bench.data.images import CachedImages, DecodedImages, SplitView
from recast_bench.data.stream import Task
from recast_bench.engine.checkpoint import load_tensors, save_tensors
from recast_bench.engine.device import autocast
from recast_bench.engine.model import TaskModel

FEATURE_VERSION = 1


def _bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and rank (0-dim BN counters included)."""
    return t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def weights_hash(module: nn.Module) -> str:
    """Content hash of ``module``'s parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_bytes(t))
    return h.hexdigest()


def dataset_key(ds: Dataset) -> str | None:
    """Content key of a dataset's rows (before any per-sample transform); ``None`` when unknown (not cached)."""
    h = hashlib.sha256()
    if isinstance(ds, Subset):
        parent = dataset_key(ds.dataset)
        if parent is None:
            return None
        h.update(parent.encode())
        h.update(np.asarray(ds.indices, dtype=np.int64).tobytes())
    elif isinstance(ds, SplitView):
        for part in ds.parts:
            if isinstance(part, CachedImages):
                h.update(Path(part.path).name.encode())  # the file name carries the cache entry's content key
            elif isinstance(part, DecodedImages):
                from recast_bench.data.cache import records_hash

                h.update(f"{records_hash(part.records)}|{part.side}|{part.size}".encode())
            else:
                return None
        h.update(ds.index.tobytes())
    elif isinstance(ds, TensorDataset):
        for t in ds.tensors:
            h.update(f"{t.dtype}|{tuple(t.shape)}".encode())
            h.update(_bytes(t))
    else:
        return None
    return h.hexdigest()


class FeatureAugment:
    """Picks each training sample's flip from ``[B, 2, D]`` features with the image path's generator and draws."""

    def __init__(self, augment: DeviceAugment | None) -> None:
        self.augment = augment

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        flips = self.augment.flips(len(x), train) if self.augment is not None and x.shape[1] == 2 else None
        if flips is None:
            return x[:, 0]
        # non_blocking: a blocking host-to-device copy would sync with the GPU's queue on every step
        return x[torch.arange(len(x), device=x.device), flips.to(x.device, non_blocking=True).long()]


def head_model(model: TaskModel) -> TaskModel:
    """A model over features: no backbone, and ``model``'s own heads (shared, so training updates them)."""
    heads_only = TaskModel(nn.Identity(), model.num_features)
    heads_only.heads = model.heads
    heads_only.active_task = model.active_task
    return heads_only


class FeatureCache:
    """Computes (or loads) one backbone's features per task split; ``forwards`` counts backbone batches run.

    Args:
        model: the frozen model whose ``backbone`` produces the features.
        cache_dir: where feature files go; ``None`` keeps them in memory only.
        device: where the backbone runs.
        precision: the trainer's precision (features are computed under the same autocast as training).
    """

    def __init__(
        self,
        model: TaskModel,
        cache_dir: str | None,
        device: torch.device,
        precision: str | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        self.model, self.device, self.precision = model, torch.device(device), precision
        self.dir = Path(cache_dir) / "features" if cache_dir else None
        self.batch_size, self.num_workers = batch_size, num_workers
        self.forwards = 0
        self._backbone_hash: str | None = None
        self._memory: dict[tuple[str, str], TensorDataset] = {}

    def _path(self, task: Task, split: str, views: int) -> Path | None:
        rows = dataset_key(getattr(task, split))
        if self.dir is None or rows is None:
            return None
        if self._backbone_hash is None:
            self._backbone_hash = weights_hash(self.model.backbone)
        tf = task.batch_transform.key() if task.batch_transform is not None else "none"
        text = f"f{FEATURE_VERSION}|{self._backbone_hash}|{rows}|{split}|{views}|{tf}|{self.precision}"
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.dir / f"{task.name}-{split}-{key}.safetensors"

    def split(self, task: Task, split: str) -> TensorDataset:
        """``(features [N, V, D], label)`` of ``task``'s ``split``; V = 2 (both flips) for a flipped train split."""
        tf = task.batch_transform
        views = 2 if split == "train" and tf is not None and tf.train_flip else 1
        mem_key = (f"{task.name}|{id(getattr(task, split))}", split)
        if mem_key in self._memory:
            return self._memory[mem_key]
        path = self._path(task, split, views)
        if path is not None and path.is_file():
            t = load_tensors(path)
            ds = TensorDataset(t["features"], t["labels"])
        else:
            feats, labels = self._compute(task.uint8(split), tf, views)
            if path is not None:
                save_tensors(path, {"features": feats, "labels": labels}, {"task": task.name, "split": split})
            ds = TensorDataset(feats, labels)
        self._memory[mem_key] = ds
        return ds

    @torch.inference_mode()
    def _compute(self, ds: Dataset, tf: BatchTransform | None, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.model.backbone
        was_training = backbone.training
        backbone.eval()  # frozen: BN statistics fixed, no dropout (what the engine trains linear with)
        backbone.to(self.device)
        # An own generator: a loader without one draws its worker seed from the global RNG, which would shift the
        # head's initialisation away from the image path's.
        loader = DataLoader(
            ds, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, generator=torch.Generator()
        )
        feats, labels = [], []
        try:
            with autocast(self.device, self.precision):
                for x, y in loader:
                    x = x.to(self.device, non_blocking=True)
                    out = []
                    for flip in (False, True)[:views]:
                        inp = x if tf is None else tf(x, torch.full((len(x),), flip, dtype=torch.bool))
                        out.append(backbone(inp).float())
                        self.forwards += 1
                    feats.append(torch.stack(out, dim=1).cpu())
                    labels.append(torch.as_tensor(y, dtype=torch.int64))
        finally:
            backbone.train(was_training)
        return torch.cat(feats), torch.cat(labels)


def feature_cache_for(method, model: TaskModel, tcfg) -> FeatureCache | None:  # noqa: ANN001 (Method, TrainerConfig)
    """A :class:`FeatureCache` when ``method`` trains on frozen backbone features, else ``None``."""
    if not method.frozen_backbone_features:
        return None
    ctx = method.ctx
    return FeatureCache(
        model, ctx.cache_dir, torch.device(ctx.device), tcfg.precision, tcfg.eval_batch_size, int(tcfg.num_workers or 0)
    )


@dataclass
class TaskInputs:
    """What the engine feeds one task's training: datasets, the model Lightning trains, the on-device finish."""

    train: Dataset
    val: Dataset
    transform: object | None
    """``(batch, train) -> model input`` on the device (:class:`DeviceAugment`, :class:`FeatureAugment`) or None."""
    features: bool

    def model(self, model: TaskModel) -> TaskModel:
        return head_model(model) if self.features else model


def task_inputs(task: Task, t: int, seed: int, cache: FeatureCache | None) -> TaskInputs:
    """uint8 images finished on the device, or cached backbone features when ``cache`` is set."""
    augment = DeviceAugment(task.batch_transform, flip_seed(seed, t)) if task.batch_transform is not None else None
    if cache is not None:
        return TaskInputs(cache.split(task, "train"), cache.split(task, "val"), FeatureAugment(augment), True)
    return TaskInputs(task.uint8("train"), task.uint8("val"), augment, False)


def eval_inputs(task: Task, model: TaskModel, cache: FeatureCache | None) -> tuple[Dataset, TaskModel, object | None]:
    """The test split, the model to evaluate and its on-device finish (``(batch, train) -> input``)."""
    if cache is not None:
        return cache.split(task, "test"), head_model(model), FeatureAugment(None)
    tf = task.batch_transform
    return task.uint8("test"), model, (DeviceAugment(tf, 0) if tf is not None else None)
