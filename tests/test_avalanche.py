"""The Avalanche baselines: stream adapter, the fixed avalanche pitfalls, CLI runs, resume and forgetting."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from recast_bench.cli import main
from recast_bench.config import compose_config
from recast_bench.engine.results import validate
from recast_bench.errors import UserError
from recast_bench.registry import METHODS, load_all

load_all()  # registers the methods; nothing here imports avalanche itself
AVALANCHE = [n for n in METHODS.names() if METHODS.get(n).runner == "avalanche"]
"""Every method that runs through avalanche-lib, from the registry."""
# Two tiny tasks with different class counts (so offsets and head slices are exercised), one epoch.
TINY = [
    "trainer=tiny", "trainer.epochs=1", "trainer.batch_size=8", "++stream.num_tasks=2",
    "++stream.classes_per_task=[2,3]", "++stream.train_per_class=4", "++stream.val_per_class=2",
    "++stream.test_per_class=4", "logger=none", "method.gdumb.mem_size=12", "method.derpp.mem_per_class=3",
    "method.er-ace.mem_per_class=3",
]  # fmt: skip


def tiny(method: str | None = None) -> list[str]:
    """TINY without the memory overrides of methods other than ``method``."""
    return [o for o in TINY if not o.startswith("method.") or o.startswith(f"method.{method}.")]


def run_cli(method: str, backbone: str, out, extra: list[str], data_dir) -> dict:  # noqa: ANN001
    args = ["run", "--method", method, "--backbone", backbone, "--stream", "synthetic", "--out", str(out)]
    overrides = tiny(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main([*args, *overrides, f"paths.data_dir={data_dir}", *extra])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    validate(res)
    if METHODS.get(method).runner == "avalanche":  # it keeps the last epoch: no claim of a val-based selection
        assert res["selection"]["mode"] == "last" and res["best_epoch"][0] == res["config"]["trainer"]["epochs"] - 1
    else:
        assert res["selection"]["mode"] == "max"
    return res


def tiny_learner(name: str, backbone: str = "vit_tiny", overrides: tuple[str, ...] = ()):  # noqa: ANN201
    """An AvalancheLearner over the tiny two-task stream, built the way the loop builds it."""
    from omegaconf import OmegaConf

    from recast_bench.backbones import build_backbone, num_features
    from recast_bench.data.stream import build_stream
    from recast_bench.engine.build import build_method
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel

    ov = tiny(name)
    cfg = compose_config([f"method=[{name}]", f"method_name={name}", f"backbone={backbone}", *ov, *overrides])
    torch.manual_seed(0)
    tasks = build_stream(cfg.stream, image_size=32)
    bb, spec, _ = build_backbone(backbone, allow_random_init=True, weights_dir="/nonexistent")
    method = build_method(name, cfg.method, spec.family)
    method.ctx = RunContext(backbone_name=backbone, family=spec.family, device="cpu")
    learner = method.make_learner(TaskModel(bb, num_features(bb)), tasks, OmegaConf.to_object(cfg.trainer), 0, "fp")
    return learner, tasks


# ---- registration and config (no avalanche import) ---------------------------------------------------------------
def test_registered_with_avalanche_runner_and_configs_compose():
    assert set(AVALANCHE) == {"ewc", "lwf", "gdumb", "derpp", "er-ace", "l2p"}  # the paper's Avalanche baselines
    for name in AVALANCHE:
        cls = METHODS.get(name)
        assert cls.runner == "avalanche" and not cls.isolates_tasks
        cfg = compose_config([f"method=[{name}]", f"method_name={name}"])  # Hydra accepts derpp and er-ace
        assert name in cfg.method
    assert METHODS.get("l2p").families == ("vit",)
    assert compose_config(["method=[gdumb]", "method_name=gdumb"]).method.gdumb.mem_size == 4400
    assert compose_config(["method=[derpp]", "method_name=derpp"]).method.derpp.mem_per_class == 120
    from recast_bench.engine.build import build_method

    with pytest.raises(UserError, match="decay_factor"):
        build_method("ewc", compose_config(["method=[ewc]", "method_name=ewc", "method.ewc.mode=online"]).method, "vit")
    with pytest.raises(UserError, match="families"):
        build_method("l2p", compose_config(["method=[l2p]", "method_name=l2p"]).method, "resnet")


# ---- adapter pieces ---------------------------------------------------------------------------------------------
def test_stream_offsets_labels_and_tags_samples():
    from baselines.avalanche_common import make_experiences
    from recast_bench.data.stream import build_stream

    cfg = compose_config(tiny())
    tasks = build_stream(cfg.stream, image_size=32)
    exps = make_experiences(tasks)
    assert [sorted(e.classes_in_this_experience) for e in exps] == [[0, 1], [2, 3, 4]]
    assert [e.task_label for e in exps] == [0, 1]
    uids = [int(u) for e in exps for u in e.dataset.uid]
    assert uids == list(range(len(tasks[0].train) + len(tasks[1].train)))


def test_der_logits_go_through_task_labels():
    from avalanche.training.supervised import der as der_module

    from baselines.avalanche_strategies import task_aware_logits

    learner, _ = tiny_learner("derpp")
    net = learner.strategy.model
    learner.adapt(net, 2)
    ds = learner.exps[1].dataset.eval()
    with pytest.raises(TypeError):  # avalanche's own version calls model(x) without task labels
        der_module.compute_dataset_logits(ds, net, 4, "cpu")
    logits = task_aware_logits(ds, net, 4, "cpu")
    net.eval()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    expected = net(x, 1)
    assert logits[0].shape == (learner.total_classes,)
    assert torch.allclose(torch.stack(logits), expected, atol=1e-5)
    # task 1's head masks task 0's classes: the logits really come from head 1, not head 0
    assert (torch.stack(logits)[:, :2] == -1000).all()


def test_mixed_task_batch_runs_the_backbone_once_even_with_a_lone_task_sample():
    """A replay batch with one sample of a task trains a ResNet (avalanche's per-task split gave BatchNorm a batch
    of 1 and stopped the run); the backbone runs once and each sample gets its own task's head."""
    learner, _ = tiny_learner("er-ace", "resnet_tiny")
    net = learner.strategy.model
    learner.adapt(net, 2)
    calls = []
    hook = net.backbone.register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([1, 0, 1, 1])
    net.train()
    out = net(x, t)  # task 0 has a single sample
    assert calls == [4] and out.shape == (4, learner.total_classes)
    net.eval()
    with torch.no_grad():
        out = net(x, t)
        feats = net.backbone(x)
    for i, task in enumerate(t.tolist()):
        torch.testing.assert_close(out[i], net.classifier.forward_single_task(feats[i : i + 1], task)[0].float())
    hook.remove()


def buffer_of(learner):  # noqa: ANN001, ANN201
    from avalanche.training.plugins import GDumbPlugin

    if learner.method.name == "gdumb":
        return learner.adapter.plugin(learner.strategy, GDumbPlugin).storage_policy
    return learner.strategy.storage_policy


@pytest.mark.slow
@pytest.mark.parametrize("name", ["derpp", "er-ace", "gdumb"])
def test_replay_buffers_keyed_by_global_class_and_restored(name, tmp_path):
    learner, tasks = tiny_learner(name)
    for t, task in enumerate(tasks):
        learner.fit_task(t, task)
    policy = buffer_of(learner)
    assert sorted(policy.buffer_groups) == [0, 1, 2, 3, 4]  # 5 classes, not max(2, 3) shared buckets
    for c, g in policy.buffer_groups.items():
        tids = {int(t) for t in g.buffer.targets_task_labels}
        assert tids == {0 if c < 2 else 1} and {int(y) for y in g.buffer.targets} == {c}
    if name != "gdumb":  # fixed 3 per class (the paper's 120 per class, scaled down)
        assert all(len(g.buffer) == 3 for g in policy.buffer_groups.values())
    assert learner.strategy.eval_mb_size == 256  # explicit, not avalanche's default of 1

    learner.save_shared(tmp_path / "shared.safetensors")
    fresh, _ = tiny_learner(name)
    fresh.load_shared(tmp_path / "shared.safetensors")
    policy2 = buffer_of(fresh)
    for c, g in policy.buffer_groups.items():
        g2 = policy2.buffer_groups[c]
        assert [int(u) for u in g2.buffer.uid] == [int(u) for u in g.buffer.uid]
        assert torch.equal(g2._buffer_weights, g._buffer_weights)
        assert torch.equal(g2.buffer[0][0], g.buffer[0][0])
        if name == "derpp":
            assert torch.equal(torch.stack(list(g2.buffer.logits)), torch.stack(list(g.buffer.logits)))
    for t, task in enumerate(tasks):
        assert fresh.evaluate(t, task) == learner.evaluate(t, task)


def test_l2p_builds_on_local_vit_and_masks_per_task():
    from avalanche.models.timm_vit import ViTWithPrompt
    from avalanche.models.vit import create_model

    from baselines.avalanche_common import TaskView
    from baselines.avalanche_l2p import local_create_model
    from recast_bench.backbones import build_backbone

    with pytest.raises(TypeError, match="PretrainedCfg"):  # the timm >= 0.9 failure our wrapper avoids
        create_model(model_name="vit_tiny_patch16_224", pretrained=False, num_classes=4)
    bb, _, _ = build_backbone("vit_tiny", allow_random_init=True, weights_dir="/nonexistent")
    bb.eval()
    plain = local_create_model(bb)(num_classes=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x)["pre_logits"], bb(x), atol=1e-5)  # our weights, same network

    learner, tasks = tiny_learner("l2p")
    s = learner.strategy
    assert isinstance(s.model, ViTWithPrompt) and s.model.head.in_features == 48  # not the hard-coded 768
    assert s.model.head.out_features == 5 and s.eval_mb_size == 256
    assert learner.adapter.trainable_params(s) == 10 * 5 * 48 + 10 * 48  # prompt pool + keys
    with torch.no_grad():
        full = learner.adapter.logits(s, x, 1)
        view = TaskView(lambda xx, t: learner.adapter.logits(s, xx, t), [s.model, s.original_vit], (2, 3)).eval()
        assert torch.allclose(view(x, 1), full[:, 2:5])  # task 1 sees only its own 3 classes


# ---- CLI runs, resume, forgetting ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", AVALANCHE)
def test_cli_run_and_resume_continue_identically(name, tmp_path, monkeypatch):
    """Runs through ``recast-bench run``; a run killed in task 2 resumes without retraining task 1, identically."""
    from baselines.avalanche_common import AvalancheLearner

    full = run_cli(name, "vit_tiny", tmp_path / "full", [], tmp_path)
    assert full["status"] == "complete" and full["method"] == name
    assert full["head_params_per_task"] == [2 * 49, 3 * 49]

    original = AvalancheLearner.fit_task
    fitted: list[int] = []

    def crash_on_task_2(self, t, task):  # noqa: ANN001, ANN202
        if t == 1:
            raise KeyboardInterrupt
        fitted.append(t)
        return original(self, t, task)

    monkeypatch.setattr(AvalancheLearner, "fit_task", crash_on_task_2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["run", "--method", name, "--backbone", "vit_tiny", "--stream", "synthetic", "--out"]
        assert main([*args, str(tmp_path / "cut"), *tiny(name), f"paths.data_dir={tmp_path}"]) == 130
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["completed_tasks"] == 1

    def record(self, t, task):  # noqa: ANN001, ANN202
        fitted.append(t)
        return original(self, t, task)

    monkeypatch.setattr(AvalancheLearner, "fit_task", record)
    resumed = run_cli(name, "vit_tiny", tmp_path / "cut", [], tmp_path)
    assert fitted == [0, 1]  # task 1 trained once, before the interruption
    assert resumed["acc_matrix"] == full["acc_matrix"]
    a = load_file(str(tmp_path / "full" / "tasks" / "syn1" / "shared.safetensors"))
    b = load_file(str(tmp_path / "cut" / "tasks" / "syn1" / "shared.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # network, EWC importances, buffers, ...: the resumed run continued exactly
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in AVALANCHE if n != "l2p"])
def test_cli_run_resnet(name, tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:  # what would reach stderr outside pytest
        res = run_cli(name, "resnet_tiny", tmp_path / "out", [], tmp_path)
    assert not [w for w in caught if "avalanche" in w.filename], [str(w.message) for w in caught]
    assert res["backbone"] == "resnet_tiny" and res["completed_tasks"] == 2
    assert res["trainable_params_per_task"][0] > 300_000  # the whole network trains
    out, err = capfd.readouterr()
    # quiet: no avalanche InteractiveLogger output, no deprecation chatter; only the loop's own lines
    assert "Start of training" not in out and "avalanche" not in err.lower()
    assert all(line.startswith("[") for line in err.splitlines()), err


def test_refuses_multi_device():
    with pytest.raises(UserError, match="one device"):
        tiny_learner("ewc", "resnet_tiny", ("trainer=ddp_cpu",))


def test_l2p_refuses_resnet(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["run", "--method", "l2p", "--backbone", "resnet_tiny", "--stream", "synthetic",
                   "--out", str(tmp_path / "o"), *TINY[:1], f"paths.data_dir={tmp_path}"])  # fmt: skip
    assert rc == 2 and not (tmp_path / "o" / "results.json").exists()


@pytest.mark.slow
def test_forgetting_is_measured_not_assumed(tmp_path):
    """Earlier-task accuracy after the last task is a fresh evaluation for finetune (Lightning) and ewc."""
    extra = ["trainer.epochs=3", "trainer.batch_size=16", "++stream.classes_per_task=[3,3]",
             "++stream.train_per_class=16", "++stream.test_per_class=8"]  # fmt: skip
    changed = []
    for name in ("finetune", "ewc"):
        res = run_cli(name, "resnet_tiny", tmp_path / name, extra, tmp_path)
        m = res["acc_matrix"]
        assert isinstance(m[1][0], float) and 0.0 <= m[1][0] <= 100.0
        changed.append(m[1][0] != m[0][0])
    assert any(changed)


def test_lr_schedule_follows_engine_and_resets_per_task():
    """StepLR as the engine's (epochs=3: x0.1 every epoch), restarting at every experience."""
    from avalanche.core import SupervisedPlugin

    learner, tasks = tiny_learner("ewc", "resnet_tiny", ("trainer.epochs=3",))
    lrs: list[float] = []

    class Record(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):  # noqa: ANN001, ANN003, ANN202
            lrs.append(strategy.optimizer.param_groups[0]["lr"])

    learner.strategy.plugins.append(Record())
    for t, task in enumerate(tasks):
        learner.fit_task(t, task)
    assert lrs == pytest.approx([0.01, 0.001, 0.0001] * 2)


# ---- execution settings (issue 13) ------------------------------------------------------------------------------
def test_bf16_autocast_covers_the_training_step_and_16_mixed_is_refused(monkeypatch):
    from baselines.avalanche_common import AutocastPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner, tasks = tiny_learner("lwf", overrides=("trainer.precision=bf16-mixed",))
        assert isinstance(learner.strategy.plugins[-1], AutocastPlugin)  # last: LwF's teacher forward is covered
        seen = []
        linear = next(m for m in learner.backbone.modules() if isinstance(m, torch.nn.Linear))
        hook = linear.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
        learner.fit_task(0, tasks[0])
        learner.fit_task(1, tasks[1])
        hook.remove()
    train = {dtype for grad, dtype in seen if grad}
    assert train == {torch.bfloat16}, seen  # every training forward (student and teacher) ran under autocast
    assert not torch.is_autocast_enabled("cpu"), "autocast is off again after training"
    with pytest.raises(UserError, match="bf16-mixed, not 16-mixed"):
        tiny_learner("ewc", overrides=("trainer.precision=16-mixed",))


def test_loader_settings_reach_avalanche_and_er_ace_replay(monkeypatch):
    from baselines.avalanche_strategies import WorkerER_ACE

    replay = []
    original = WorkerER_ACE._before_training_exp

    def spy(self, **kwargs):  # noqa: ANN001, ANN003, ANN202
        original(self, **kwargs)
        if self.replay_loader is not None:
            replay.append(self.replay_loader.gi_frame.f_locals["loader"].num_workers)

    monkeypatch.setattr(WorkerER_ACE, "_before_training_exp", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner, tasks = tiny_learner("er-ace", overrides=("trainer.num_workers=1",))
        assert learner.loader_kwargs() == {"num_workers": 1, "pin_memory": False, "persistent_workers": False}
        learner.fit_task(0, tasks[0])
        learner.fit_task(1, tasks[1])
    assert replay == [1]  # task 1 replays task 0's buffer through a loader with the run's workers
