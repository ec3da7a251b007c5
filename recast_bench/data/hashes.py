"""Split hashes: one SHA-256 per task and split over the rows it used, so anyone can check which data a run saw.

For split ``s`` of a task, every row gives the line ``f"{file}\\t{label}\\t{s}\\n"``; the lines are sorted (Python's
string order, i.e. by code point) and joined, and the hash is ``hashlib.sha256(text.encode("utf-8")).hexdigest()``.

* ``file``: ImageFolder tasks: the path relative to the task root with ``/`` separators
  (``train/cat/001.jpg``; a val split held out of train keeps its ``train/...`` paths). CSV tasks: the ``path``
  cell as written (stripped of surrounding spaces). Built-in datasets: the path as the dataset's own lists give
  it (relative to ``jpg/``, ``images/``, ``Images/``), or ``<part>:<row>`` for CIFAR's arrays (``train:17`` is row
  17 of the official train arrays). Generated streams (synthetic): ``<split>:<row>``.
* ``label``: the class name (folder name, CSV label, the dataset's class name), or the class index where the
  dataset has no names.

Sample limits (``stream.max_*_per_task``) hash only the rows kept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset

from recast_bench.data.stream import SPLITS, Task
from recast_bench.errors import UserError


def dataset_labels(ds: Dataset) -> np.ndarray:
    """Integer labels of a split's rows, without loading images where the dataset knows them."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels, dtype=np.int64)
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy().astype(np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]


def split_rows(task: Task, split: str) -> list[tuple[str, str]]:
    """``(file, label)`` of every row of ``task``'s ``split``, in row order (see the module docstring)."""
    labels = dataset_labels(getattr(task, split))
    ids = task.row_ids[split] if task.row_ids is not None else [f"{split}:{i}" for i in range(len(labels))]
    names = task.class_names if task.class_names and len(task.class_names) == task.num_classes else None
    # A label outside the class list hashes as its number: the run then stops on it with one line (check_labels)
    return [(f, names[y] if names and 0 <= y < len(names) else str(y)) for f, y in zip(ids, labels.tolist())]


def rows_hash(rows: list[tuple[str, str]], split: str) -> str:
    """SHA-256 of the sorted ``file\\tlabel\\tsplit\\n`` lines."""
    text = "".join(sorted(f"{f}\t{y}\t{split}\n" for f, y in rows))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_hashes(tasks: list[Task]) -> dict[str, dict[str, str]]:
    """``{task: {"train": sha256, "val": ..., "test": ...}}``: results.json's ``split_hashes``."""
    return {t.name: {s: rows_hash(split_rows(t, s), s) for s in SPLITS} for t in tasks}


def check_split_hashes(
    recorded: dict | None, current: dict[str, dict[str, str]], where: str | Path, fix: str = "use another --out"
) -> None:
    """Refuse, in one line, data that differs from what a run in ``where`` recorded (a run without hashes passes)."""
    if not recorded:
        return
    for task, splits in current.items():
        for split, digest in splits.items():
            old = (recorded.get(task) or {}).get(split)
            if old is not None and old != digest:
                raise UserError(
                    f"{where} holds a run whose {task} {split} split had other data (split hash {old[:12]}..., now "
                    f"{digest[:12]}...); {fix}, or restore the data"
                )
