"""Task-agnostic inference: choose each image's task when nobody says, and measure how well that works.

Every task's head scores every image under that task's own state (RECAST: its coefficients; an adapter: its
weights), and the image goes to the task whose head is most confident. The state is switched **once per task for
the whole batch** (T switches for T tasks, whatever the batch size), so a method whose switch costs a weight
regeneration (RECAST, about 7 ms on ViT-S) pays it T times per batch, not per image.

Rules (``rule=``; higher score wins, ties go to the earlier task):

* ``max_softmax`` (default): the highest top-1 softmax probability. FACIL's task-agnostic prediction with
  ``--multi-softmax`` (``src/approach/incremental_learning.py``, ``calculate_metrics``: argmax over the
  concatenated per-head log-softmax outputs) is this rule. Not corrected for class count: a head with fewer
  classes has a higher floor (1/C), as in FACIL.
* ``min_entropy``: the lowest softmax entropy **divided by log(C)** (our choice, flagged: it puts heads of
  different class counts on one 0..1 scale, where 1 is a uniform output; raw entropy would favour small heads,
  whose maximum is log C).
* ``max_logit``: the highest raw logit over all heads, FACIL's default task-agnostic prediction (argmax over the
  concatenated logits); heads are compared unnormalised.

Figures (``results.json`` key ``task_agnostic``, CONTRACTS.md): over every task's test images, pooled,
``task_id_acc`` is the % whose task is chosen right and ``acc`` the % classified right when the task is not given
(right task and right class: FACIL's "task-agnostic accuracy"); the accuracy matrix is the task-aware figure
(FACIL's "task-aware": the task id is given).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from recast_bench.data.stream import Task
from recast_bench.errors import UserError

if TYPE_CHECKING:
    from recast_bench.engine.learner import LightningLearner

RULES: dict[str, str] = {
    "max_softmax": "highest top-1 softmax probability (FACIL --multi-softmax)",
    "min_entropy": "lowest softmax entropy / log(classes) (ours)",
    "max_logit": "highest raw logit (FACIL's default)",
}
DEFAULT_RULE = "max_softmax"

Heads = Callable[[int], Callable[[torch.Tensor], torch.Tensor]]
"""``heads(t)`` switches the model to task ``t``'s state and returns ``x -> logits`` of task ``t``'s head."""


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise UserError(f"unknown task-agnostic rule {rule!r}; valid: {', '.join(RULES)}")
    return rule


def confidence(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """``[B]`` scores of one head's ``[B, C]`` logits under ``rule`` (higher: more confident)."""
    z = logits.float()
    if rule == "max_softmax":
        return z.softmax(-1).amax(-1)
    if rule == "min_entropy":
        if z.shape[-1] < 2:
            return torch.zeros(z.shape[0], device=z.device)
        logp = z.log_softmax(-1)
        return (logp.exp() * logp).sum(-1) / math.log(z.shape[-1])  # -H / log C
    if rule == "max_logit":
        return z.amax(-1)
    raise UserError(f"unknown task-agnostic rule {rule!r}; valid: {', '.join(RULES)}")


class Choice:
    """The running best task of ``n`` images over the heads seen so far (tensors on ``device``)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.score = torch.full((n,), -math.inf, device=device)
        self.task = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.cls = torch.zeros(n, dtype=torch.int64, device=device)

    def update(self, t: int, rows: slice, logits: torch.Tensor, rule: str) -> torch.Tensor:
        """Offer task ``t``'s logits for images ``rows``; returns their scores."""
        s = confidence(logits, rule)
        better = s > self.score[rows]  # strict: a tie keeps the earlier task
        self.score[rows] = torch.where(better, s, self.score[rows])
        self.task[rows] = torch.where(better, torch.full_like(self.task[rows], t), self.task[rows])
        self.cls[rows] = torch.where(better, logits.argmax(-1), self.cls[rows])
        return s


def test_inputs(tasks: list[Task], j: int, t: int) -> tuple[Dataset, Callable | None]:
    """Task ``j``'s test images as task ``t`` preprocesses them: ``j``'s geometry, ``t``'s normalisation."""
    own, other = tasks[j].batch_transform, tasks[t].batch_transform
    if own is None:  # model-ready tensors (synthetic stream): used as they are
        return tasks[j].test, None
    tf = own if other is None else replace(own, mean=other.mean, std=other.std)
    return tasks[j].uint8("test"), lambda x: tf(x, None)


def agnostic_accuracy(
    heads: Heads,
    tasks: list[Task],
    rule: str = DEFAULT_RULE,
    device: torch.device | str = "cpu",
    inputs: Callable[[int, int], tuple[Dataset, Callable | None]] | None = None,
    loader: Callable[[Dataset], Iterable] | None = None,
    after_task: int | None = None,
) -> dict[str, Any]:
    """results.json's ``task_agnostic`` over ``tasks``' test sets (CONTRACTS.md; see the module docstring).

    Args:
        heads: switches state and gives a task's logits (:data:`Heads`); called once per task.
        inputs: ``(j, t) -> (dataset, finish)``: task ``j``'s test set for task ``t``'s head (:func:`test_inputs`).
        loader: ``dataset -> batches``, in order (default: a plain DataLoader, batch 256).
        after_task: recorded as is (default: the last task's index).
    """
    check_rule(rule)
    device = torch.device(device)
    inputs = inputs or (lambda j, t: test_inputs(tasks, j, t))
    loader = loader or (lambda ds: DataLoader(ds, batch_size=256, shuffle=False))
    n = [len(t.test) for t in tasks]  # type: ignore[arg-type]
    choices = [Choice(k, device) for k in n]
    labels = [torch.zeros(k, dtype=torch.int64, device=device) for k in n]
    for t in range(len(tasks)):
        # One state switch per task for every test image of every task; outside inference mode, as the engine's own
        # evaluation switches, so that no inference tensor ends up in the model's state.
        logits_of = heads(t)
        with torch.inference_mode():
            for j in range(len(tasks)):
                ds, finish = inputs(j, t)
                start = 0
                for x, y in loader(ds):
                    x = x.to(device, non_blocking=True)
                    rows = slice(start, start + len(x))
                    choices[j].update(t, rows, logits_of(finish(x) if finish is not None else x), rule)
                    if t == 0:
                        labels[j][rows] = torch.as_tensor(y).to(device, non_blocking=True)
                    start += len(x)
    per_task, right_task, right = {}, 0, 0
    for j, task in enumerate(tasks):
        hit_task = choices[j].task == j
        hit = hit_task & (choices[j].cls == labels[j])
        a, b = int(hit_task.sum()), int(hit.sum())  # one host sync per task
        per_task[task.name] = {"task_id_acc": 100.0 * a / max(1, n[j]), "acc": 100.0 * b / max(1, n[j]), "n": n[j]}
        right_task, right = right_task + a, right + b
    total = max(1, sum(n))
    return {
        "rule": rule,
        "task_id_acc": 100.0 * right_task / total,
        "acc": 100.0 * right / total,
        "per_task": per_task,
        "after_task": len(tasks) - 1 if after_task is None else int(after_task),
    }


def learner_heads(learner: LightningLearner, on_features: bool = False) -> Heads:
    """:data:`Heads` over a LightningLearner's stored task states (as its own evaluation restores them);
    ``on_features``: the heads alone, over cached backbone features."""

    def heads(t: int) -> Callable[[torch.Tensor], torch.Tensor]:
        learner.switch_to(t)  # the learner's own task switch (not counted in its evaluation's switch times)
        model = learner.model.to(learner.device).eval()
        model.active_task = t
        if on_features:
            from recast_bench.engine.features import head_model

            model = head_model(model)
        channels_last = bool(learner.tcfg.channels_last)

        def logits(x: torch.Tensor) -> torch.Tensor:
            from recast_bench.engine.device import autocast

            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(learner.device, learner.tcfg.precision):
                return model(x, t)

        return logits

    return heads


def _shared_normalisation(tasks: list[Task]) -> bool:
    tfs = [t.batch_transform for t in tasks]
    return all(tf is not None for tf in tfs) and len({(tf.mean, tf.std) for tf in tfs}) == 1  # type: ignore[union-attr]


def evaluate_learner(
    learner: Any, tasks: list[Task], rule: str = DEFAULT_RULE, after_task: int | None = None
) -> dict | None:  # noqa: ANN401, E501
    """``task_agnostic`` for the loop: every task in ``tasks`` under the learner's stored states; ``None`` for a
    learner without per-task states (Avalanche).

    A frozen-feature method (``linear``) reuses the learner's cached test features when every task normalises
    alike (each head then sees the same features the image path would give it).
    """
    from recast_bench.engine.features import FeatureAugment
    from recast_bench.engine.learner import LightningLearner, make_loader

    if not isinstance(learner, LightningLearner):
        return None

    tcfg = learner.tcfg
    learner.model.to(learner.device)
    use_features = learner.features is not None and _shared_normalisation(tasks)
    was_training = learner.model.training

    def inputs(j: int, t: int) -> tuple[Dataset, Callable | None]:
        if use_features:
            return learner.features.split(tasks[j], "test"), lambda x: FeatureAugment(None)(x, False)
        return test_inputs(tasks, j, t)

    try:
        return agnostic_accuracy(
            learner_heads(learner, use_features), tasks, rule, learner.device, inputs,
            lambda ds: make_loader(ds, tcfg.eval_batch_size, False, tcfg, learner.seed, persistent=False),
            after_task,
        )  # fmt: skip
    finally:
        learner.model.train(was_training)
