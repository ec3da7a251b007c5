"""The method contract, checked for every registered Lightning-engine method (and every ``recast+X``).

For each method on the tiny backbone of each family it supports: two tiny tasks train through ``LightningLearner``;
after a backward pass exactly the method's task/shared parameters and the task head have gradients; the saved task
state (safetensors) restored into a freshly built model gives identical outputs; and a method that claims
isolation leaves task 1's test outputs bit-for-bit unchanged after training task 2.

The whole sweep (about 25 cases) takes ~20 s on 2 idle CPU cores, so none of it is marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch

from recast_bench.backbones import build_backbone
from recast_bench.config import StreamConfig, TrainerConfig
from recast_bench.data.synthetic import synthetic_stream
from recast_bench.engine.build import build_method
from recast_bench.engine.learner import LightningLearner
from recast_bench.engine.method import Method, RunContext
from recast_bench.engine.model import TaskModel, head_key
from recast_bench.engine.step import TrainStep
from recast_bench.registry import METHODS, all_method_names, parse_method_name

TINY = {"vit": "vit_tiny", "resnet": "resnet_tiny"}
TINY_OVERRIDES = {("recast", "vit"): {"groups": 2, "mimic_iters": 20}, ("recast", "resnet"): {"mimic_iters": 20}}
"""vit_tiny has 4 blocks, so RECAST's paper default G=6 cannot apply; few Neural Mimicry iterations keep it fast."""


def _cases() -> list:
    cases = []
    for name in all_method_names():
        classes = [METHODS.get(p) for p in parse_method_name(name)]
        if any(getattr(c, "runner", "lightning") != "lightning" for c in classes):
            continue
        families = [f for f in ("vit", "resnet") if all(f in c.families for c in classes)]
        for fam in families:
            cases.append(pytest.param(name, fam, id=f"{name}-{fam}"))
    return cases


def _build(name: str, family: str, cache_dir: str) -> tuple[TaskModel, object, int]:
    torch.manual_seed(0)  # same random "pretrained" weights for every build
    bb, spec, _ = build_backbone(TINY[family], allow_random_init=True)
    model = TaskModel(bb, bb.num_features)
    parts = parse_method_name(name)
    method = build_method(name, {p: TINY_OVERRIDES.get((p, family), {}) for p in parts}, family)
    method.ctx = RunContext(
        backbone_name=TINY[family], family=family, cache_dir=cache_dir, seed=0, image_size=spec.image_size
    )
    method.setup(model)
    return model, method, spec.image_size


def _learner(model: TaskModel, method) -> LightningLearner:  # noqa: ANN001
    tcfg = TrainerConfig(epochs=1, batch_size=16, accelerator="cpu", progress_bar=False)
    return LightningLearner(model, method, tcfg, seed=0, fingerprint="contract")


@torch.no_grad()
def _outputs(learner: LightningLearner, t: int, task) -> torch.Tensor:  # noqa: ANN001
    """Task ``t``'s logits on its test set under its restored state."""
    learner.evaluate(t, task)  # restores task t's state (the engine's own path)
    model = learner.model.eval()
    model.active_task = t
    x = torch.stack([task.test[i][0] for i in range(len(task.test))])
    return model(x, t)


def _check_gradients(learner: LightningLearner, t: int, task) -> None:  # noqa: ANN001
    model, method = learner.model, learner.method
    trainable = learner.trainable(t)
    intended = set(trainable)
    model.train()
    step = TrainStep(model, method, t, trainable, learner.tcfg)  # the engine's step, up to its gradient hook
    step.begin_batch()
    model.zero_grad(set_to_none=True)
    x = torch.stack([task.train[i][0] for i in range(8)])
    y = torch.tensor([int(task.train[i][1]) for i in range(8)])
    loss, _ = step.loss(x, y)
    loss.backward()
    step.after_backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    head = {n for n in intended if n.startswith(f"heads.{head_key(t)}.")}
    assert head, "the task head must train"
    assert with_grad == intended, (
        f"missing gradients: {sorted(intended - with_grad)[:5]}; unexpected: {sorted(with_grad - intended)[:5]}"
    )


@pytest.mark.parametrize(("name", "family"), _cases())
def test_method_contract(name: str, family: str, tmp_path) -> None:
    torch.set_num_threads(2)
    cache = str(tmp_path / "cache")
    model, method, size = _build(name, family, cache)
    scfg = StreamConfig(num_tasks=2, classes_per_task=[3, 2], train_per_class=8, val_per_class=4, test_per_class=4)
    tasks = synthetic_stream(scfg, size)
    learner = _learner(model, method)

    # (a) two tasks train; (b) the gradient set is exactly the intended one.
    info = learner.fit_task(0, tasks[0])
    backbone_numel = sum(p.numel() for n, p in learner.trainable(0).items() if not n.startswith("heads."))
    if type(method).count_task_params is Method.count_task_params:  # the default: every trained backbone entry
        assert info["trainable_params"] == backbone_numel, (info["trainable_params"], backbone_numel)
    else:  # a method that counts only its learnt entries (LoRA's pruning), or a composite of parts
        assert 0 < info["trainable_params"] <= backbone_numel, (info["trainable_params"], backbone_numel)
    assert (info["trainable_params"] == 0) == (backbone_numel == 0)  # only ``linear`` trains the head alone
    before = _outputs(learner, 0, tasks[0])
    _check_gradients(learner, 0, tasks[0])
    learner.fit_task(1, tasks[1])
    after = [_outputs(learner, t, tasks[t]) for t in (0, 1)]

    # (d) isolation: task 1's outputs are bit-for-bit unchanged by training task 2.
    if method.isolates_tasks:
        assert torch.equal(before, after[0]), f"{name} claims isolation but task 1 changed"

    # (c) task state round-trips through safetensors into a freshly built model.
    for t in (0, 1):
        learner.save_task(t, tasks[t], tmp_path / f"task{t}")
    learner.save_shared(tmp_path / "shared.safetensors")
    model2, method2, _ = _build(name, family, cache)
    learner2 = _learner(model2, method2)
    learner2.load_shared(tmp_path / "shared.safetensors")
    for t in (0, 1):
        learner2.load_task(t, tasks[t], tmp_path / f"task{t}")
    for t in (0, 1):
        assert torch.equal(_outputs(learner2, t, tasks[t]), after[t]), f"{name}: task {t} state did not round-trip"


@pytest.mark.parametrize("name", METHODS.names())
def test_registered_method_declares_the_contract(name: str) -> None:
    """Every registered method, Avalanche's included (from the registry, not a list): its name is the registered one,
    it builds from its own typed config, and a method that brings its own learner is the only kind that has one."""
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name
    assert cls.runner in ("lightning", "avalanche") and set(cls.families) <= {"vit", "resnet"} and cls.families
    family = cls.families[0]
    method = build_method(name, {}, family)
    assert type(method) is cls and isinstance(method.cfg, cls.Config) and method.name == name
    own_learner = type(method).make_learner is not Method.make_learner
    assert own_learner == (cls.runner != "lightning")
    if cls.runner == "lightning":
        assert method.make_learner(None, [], TrainerConfig(), 0, "fp") is None  # the engine's learner runs it


def test_the_engine_finds_no_method_hook_by_name() -> None:
    """Every hook is declared on Method: the engine, the registry and deploy call them, never ``getattr`` them."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recast_bench"
    files = [*root.glob("engine/*.py"), root / "registry.py", *root.glob("deploy/*.py")]
    found = [
        f"{f.name}: {m.group(0)}"
        for f in files
        for m in re.finditer(
            r"(getattr|hasattr)\((self\.)?(method|adapter|METHODS\.get\([^)]*\)|p|part)\b[^)]*\)", f.read_text()
        )
    ]
    assert not found, found
