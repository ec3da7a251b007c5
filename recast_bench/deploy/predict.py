"""Classify images with a loaded run: the same preprocessing as evaluation, top-k class names with probabilities.

Accepted images:

* a path (``str`` or ``Path``) to any file PIL can decode, or a PIL image: resized and center-cropped exactly like
  the run's evaluation images (:func:`recast_bench.data.transforms.preprocess`), then normalised with the task's
  statistics;
* a ``uint8`` tensor ``[3, H, W]``: treated like a decoded image (resize, crop, normalise);
* a floating-point tensor ``[3, S, S]`` at the run's image size: an already preprocessed model input (for example a
  sample of the run's own test split), used as is.

``task="auto"`` chooses each image's task (:mod:`recast_bench.deploy.agnostic`): every image is decoded once, then
normalised and scored under each task in turn, one state switch per task for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.deploy.run import LoadedRun, TaskInfo


def _decode(path: Path, size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    from recast_bench.data.transforms import preprocess

    if not path.is_file():
        raise UserError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            im.load()
            return preprocess(im, size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({type(e).__name__})") from None


def to_pixels(image: Any, size: int) -> torch.Tensor:  # noqa: ANN401
    """One image (see module docstring) as uint8 ``[3, size, size]`` (resized, cropped), or a float tensor that is
    already a model input."""
    from PIL import Image

    from recast_bench.data.transforms import preprocess

    if isinstance(image, str | Path):
        return _decode(Path(image), size)
    if isinstance(image, Image.Image):
        return preprocess(image, size)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"an image tensor must be [3, H, W], got {list(image.shape)}")
        if image.dtype.is_floating_point:
            if tuple(image.shape[1:]) != (size, size):
                raise UserError(f"a float image tensor is a preprocessed input and must be [3, {size}, {size}]")
            return image.float()
        if image.dtype != torch.uint8:
            raise UserError(f"an image tensor must be uint8 (raw) or float (preprocessed), got {image.dtype}")
        return preprocess(image.permute(1, 2, 0).numpy(), size)
    raise UserError(f"cannot classify a {type(image).__name__}; give paths, PIL images or tensors")


def normalise(x: torch.Tensor, info: TaskInfo) -> torch.Tensor:
    """uint8 pixels -> the task's model input (float inputs pass unchanged)."""
    if x.dtype.is_floating_point:
        return x
    mean = torch.tensor(info.mean).view(3, 1, 1)
    std = torch.tensor(info.std).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def to_input(image: Any, info: TaskInfo, size: int) -> torch.Tensor:  # noqa: ANN401
    """One image (see module docstring) as a normalised float tensor ``[3, size, size]``."""
    return normalise(to_pixels(image, size), info)


@dataclass
class AutoPrediction:
    """One image's prediction when the task is not given."""

    task: str
    """The chosen task."""
    score: float
    """The rule's score of the chosen task (``max_softmax``: its top-1 probability)."""
    top: list[tuple[str, float]]
    """Top-k ``(class name, probability)`` under the chosen task."""
    scores: dict[str, float] = field(default_factory=dict)
    """Every task's score, by name."""


def predict_auto(run: LoadedRun, items: list, top_k: int, rule: str, batch_size: int = 64) -> list[AutoPrediction]:
    """Choose each image's task by ``rule``, then its top-k classes under that task."""
    from recast_bench.deploy.agnostic import check_rule, confidence

    check_rule(rule)
    pixels = [to_pixels(img, run.image_size) for img in items]  # decoded once, normalised per task
    scores = torch.empty(len(run.tasks), len(items))
    probs: list[torch.Tensor] = []
    for info in run.tasks:  # one state switch per task for the whole batch
        rows = []
        for start in range(0, len(items), batch_size):
            x = torch.stack([normalise(p, info) for p in pixels[start : start + batch_size]])
            rows.append(run.logits(x, info.name).float())
        logits = torch.cat(rows)
        scores[info.index] = confidence(logits, rule)
        probs.append(logits.softmax(-1))
    best = scores.argmax(0)  # the first maximum: a tie keeps the earlier task
    out = []
    for i, t in enumerate(best.tolist()):
        info = run.tasks[t]
        values, classes = probs[t][i].topk(min(top_k, info.num_classes))
        top = [(info.class_names[c], float(p)) for p, c in zip(values.tolist(), classes.tolist())]
        named = {x.name: float(scores[x.index, i]) for x in run.tasks}
        out.append(AutoPrediction(info.name, float(scores[t, i]), top, named))
    return out


def predict(
    run: LoadedRun,
    images: Any,  # noqa: ANN401
    task: str | list[str],
    top_k: int = 5,
    rule: str = "max_softmax",
) -> list[list[tuple[str, float]]] | list[AutoPrediction]:
    """Top-``top_k`` ``(class name, probability)`` for each image, under one task or one task per image; with
    ``task="auto"``, an :class:`AutoPrediction` per image (the task chosen by ``rule``, and its top-k)."""
    single = not isinstance(images, list | tuple)
    items = [images] if single else list(images)
    if not items:
        return []
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if task == "auto":
        return predict_auto(run, items, top_k, rule)
    tasks = [task] * len(items) if isinstance(task, str) else list(task)
    if len(tasks) != len(items):
        raise UserError(f"got {len(items)} images but {len(tasks)} task names; give one task or one per image")
    infos = [run.task(t) for t in tasks]  # unknown names fail before any image is decoded
    inputs = [to_input(img, info, run.image_size) for img, info in zip(items, infos)]
    out: list[list[tuple[str, float]] | None] = [None] * len(items)
    for name in dict.fromkeys(tasks):  # one switch per task, in first-seen order
        idx = [i for i, t in enumerate(tasks) if t == name]
        probs = run.logits(torch.stack([inputs[i] for i in idx]), name).softmax(-1)
        info = run.task(name)
        k = min(top_k, info.num_classes)
        values, classes = probs.topk(k, dim=-1)
        for row, i in enumerate(idx):
            out[i] = [(info.class_names[c], float(p)) for p, c in zip(values[row].tolist(), classes[row].tolist())]
    return out  # type: ignore[return-value]
