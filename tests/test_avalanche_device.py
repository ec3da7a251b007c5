"""The Avalanche strategies on the uint8 device path (baselines/avalanche_device.py) against the float CPU path.

Stated tolerance: with flips off both paths feed the same images up to float rounding (the device pipeline equals
the per-sample CPU transform to 1e-6, tests/test_data_device.py), so one epoch of training ends with the same test
predictions and network weights within 1e-4 (relative to each tensor's largest entry; measured: 0, bitwise equal on
the CPU).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from recast_bench.config import compose_config
from recast_bench.data.device_transforms import CpuTransform
from recast_bench.data.stream import build_stream

MEMORY = ["method.gdumb.mem_size=12", "method.derpp.mem_per_class=3", "method.er-ace.mem_per_class=3"]


def six_tasks(root, cache_dir, flips: bool = True) -> list:  # noqa: ANN001
    """CIFAR-10 (stored at its native 32 px) and Flowers (stored at the resize target, 37 px) at 32 px."""
    cfg = compose_config(["stream=six", f"++stream.root={root}", "++stream.tasks=[cifar10,flowers102]"]).stream
    tasks = build_stream(cfg, 32, str(cache_dir))
    if flips:
        return tasks
    out = []
    for t in tasks:
        bt = dataclasses.replace(t.batch_transform, train_flip=False)
        train = t.train.with_transform(CpuTransform(bt, train=True))
        out.append(dataclasses.replace(t, batch_transform=bt, train=train))
    return out


def learner_for(name: str, tasks: list, monkeypatch, device_path: bool):  # noqa: ANN001, ANN201
    from baselines import avalanche_common
    from recast_bench.backbones import build_backbone, num_features
    from recast_bench.engine.build import build_method
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel

    if not device_path:
        monkeypatch.setattr(avalanche_common, "uses_device_path", lambda name, tasks: False)
    cfg = compose_config([f"method=[{name}]", f"method_name={name}", "trainer=tiny", "trainer.epochs=1",
                          "trainer.batch_size=8", *[m for m in MEMORY if m.startswith(f"method.{name}.")]])  # fmt: skip
    torch.manual_seed(0)
    bb, spec, _ = build_backbone("vit_tiny", allow_random_init=True)
    method = build_method(name, cfg.method, spec.family)
    method.ctx = RunContext(backbone_name="vit_tiny", family=spec.family, device="cpu")
    tcfg = OmegaConf.to_object(cfg.trainer)
    learner = method.make_learner(TaskModel(bb, num_features(bb)), tasks, tcfg, 0, "fp")
    monkeypatch.undo()
    return learner


def train_and_record(learner, tasks) -> dict:  # noqa: ANN001
    """Train both tasks, recording what avalanche moved to the device for each training batch."""
    strategy, moved = learner.strategy, []
    unpack = strategy._unpack_minibatch

    def spy() -> None:
        unpack()
        moved.append((strategy.mbatch[0].dtype, strategy.mbatch[0].nbytes, len(strategy.mbatch[0])))

    strategy._unpack_minibatch = spy
    preds = []
    for t, task in enumerate(tasks):
        torch.manual_seed(100 + t)  # avalanche shuffles with the global RNG
        learner.fit_task(t, task)
        learner.evaluate(t, task)
        preds.append(learner.last_predictions)
    return {"moved": moved, "preds": preds, "state": strategy.model.state_dict()}


def test_only_single_task_strategies_take_the_device_path(six_root, tmp_path) -> None:
    from baselines.avalanche_device import uses_device_path

    tasks = six_tasks(six_root, tmp_path)
    assert [n for n in ("ewc", "lwf", "gdumb", "derpp", "er-ace", "l2p") if uses_device_path(n, tasks)] == [
        "ewc", "lwf", "l2p"
    ]  # fmt: skip
    no_uint8 = [dataclasses.replace(t, batch_transform=None) for t in tasks]  # e.g. the synthetic stream
    assert not uses_device_path("ewc", no_uint8)


@pytest.mark.parametrize("name", ["ewc", "lwf", "l2p"])
def test_device_path_matches_the_float_path_with_fewer_bytes(name, six_root, tmp_path, monkeypatch) -> None:
    tasks = six_tasks(six_root, tmp_path, flips=False)
    runs = {}
    for device_path in (True, False):
        learner = learner_for(name, tasks, monkeypatch, device_path)
        assert learner.device_path is device_path
        runs[device_path] = train_and_record(learner, tasks)
    dev, cpu = runs[True], runs[False]
    # What crosses to the device: uint8 squares (CIFAR 3x32x32, Flowers 3x37x37) instead of float 3x32x32.
    assert {d for d, _, _ in dev["moved"]} == {torch.uint8} and {d for d, _, _ in cpu["moved"]} == {torch.float32}
    per_image = sorted({b // n for _, b, n in dev["moved"]}), sorted({b // n for _, b, n in cpu["moved"]})
    assert per_image == ([3 * 32 * 32, 3 * 37 * 37], [4 * 3 * 32 * 32])
    assert sum(b for _, b, _ in dev["moved"]) * 2.9 < sum(b for _, b, _ in cpu["moved"])
    # Same training: same predictions, same weights (EWC's importance pass and LwF's teacher included).
    for (p_dev, y_dev), (p_cpu, y_cpu) in zip(dev["preds"], cpu["preds"], strict=True):
        assert torch.equal(y_dev, y_cpu) and torch.equal(p_dev, p_cpu)
    for key, want in cpu["state"].items():
        got = dev["state"][key]
        if want.is_floating_point():
            err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
            assert err <= 1e-4, (key, err)


def test_avalanche_predictions_are_cpu_int64_in_test_order(six_root, tmp_path, monkeypatch) -> None:
    tasks = six_tasks(six_root, tmp_path)
    learner = learner_for("ewc", tasks, monkeypatch, True)
    learner.fit_task(0, tasks[0])
    acc = learner.evaluate(0, tasks[0])
    pred, label = learner.last_predictions
    assert pred.dtype == label.dtype == torch.int64 and pred.device.type == label.device.type == "cpu"
    test = tasks[0].test
    assert torch.equal(label, torch.tensor([int(test[i][1]) for i in range(len(test))]))  # test-set order
    assert int(pred.max()) < tasks[0].num_classes  # the task's own head: classes of this task only
    assert acc == pytest.approx(100.0 * float((pred == label).float().mean()))
