"""The task loop: a real run's results.json, per-task state round trip, resume without retraining, lock."""

from __future__ import annotations

import json

import pytest
import torch

from recast_bench.cli import main
from recast_bench.engine.checkpoint import RunLock, load_tensors
from recast_bench.engine.learner import LightningLearner
from recast_bench.engine.results import validate
from recast_bench.errors import UserError


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_run_writes_correct_results(run_args, tmp_path):
    out = tmp_path / "lin"
    assert main(run_args("linear", out=out)) == 0
    res = _results(out)
    validate(res)
    assert res["status"] == "complete" and res["method"] == "linear" and res["backbone"] == "vit_tiny"
    assert res["tasks"] == ["syn0", "syn1", "syn2"] and res["num_classes"] == [3, 2, 4]
    m = res["acc_matrix"]
    assert m[0][1] is None and m[0][2] is None and m[1][2] is None
    # linear is parameter-isolated: an earlier task's accuracy cannot move when later tasks train
    assert m[0][0] == m[1][0] == m[2][0] and m[1][1] == m[2][1]
    assert res["final_acc"] == m[2] and res["avg_acc"] == pytest.approx(sum(m[2]) / 3)
    assert res["bwt"] == pytest.approx(0.0)
    assert res["trainable_params_per_task"] == [0, 0, 0]
    assert res["head_params_per_task"] == [48 * 3 + 3, 48 * 2 + 2, 48 * 4 + 4]
    assert all(b > 0 for b in res["head_bytes_per_task"])
    assert res["wall_s"] > 0 and res["peak_mem_mb"] > 0 and res["config"]["method_name"] == "linear"
    for t in res["tasks"]:
        head = load_tensors(out / "tasks" / t / "head.safetensors")
        assert set(head) == {"weight", "bias"}
    # schema 2 (CONTRACTS.md): compile, measured timing per task, task switches, the checkout and avalanche's version
    assert res["schema_version"] == 2 and res["compile"] is False and res["compile_backend"] is None
    assert res["git_commit"] is None or len(res["git_commit"]) == 40
    assert "avalanche" in res["versions"] and res["task_switch_ms"] > 0
    assert len(res["timing"]) == 3
    for timing in res["timing"]:
        assert timing["timed_steps"] >= 1 and 0 < timing["timed_images"] <= timing["timed_steps"] * 16
        assert timing["img_s_device"] >= timing["img_s"] > 0 and timing["task_fixed_s"] >= timing["eval_s"] > 0
    # per-image predictions of the last evaluation, in test-set order: they give the last accuracy row
    preds = load_tensors(out / "predictions.safetensors")
    for j, name in enumerate(res["tasks"]):
        pred, label = preds[f"pred/{name}"], preds[f"label/{name}"]
        assert pred.dtype == torch.int16 and len(pred) == 6 * res["num_classes"][j]
        assert 100.0 * float((pred == label).double().mean()) == pytest.approx(m[2][j])


def test_finetune_shows_forgetting_and_saves_shared_state(run_args, tmp_path):
    out = tmp_path / "ft"
    assert main(run_args("finetune", out=out, extra=["method.finetune.lr=3e-3"])) == 0
    res = _results(out)
    validate(res)
    assert res["isolates_tasks"] is False
    assert res["trainable_params_per_task"][0] > 10_000  # the whole backbone trains
    assert (out / "tasks" / "syn2" / "shared.safetensors").exists()
    assert not (out / "tasks" / "syn0" / "shared.safetensors").exists(), "superseded shared states are pruned"
    # earlier tasks are re-evaluated with the drifted backbone, not copied from the diagonal
    assert res["acc_matrix"][2][0] != res["acc_matrix"][0][0] or res["acc_matrix"][2][1] != res["acc_matrix"][1][1]


def test_resume_continues_without_retraining(run_args, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    assert main(run_args("finetune", out=ref)) == 0

    out = tmp_path / "int"
    real_fit = LightningLearner.fit_task
    calls: list[int] = []
    crash = {"armed": True}

    def crashing_fit(self, t, task):  # noqa: ANN001, ANN202
        calls.append(t)
        if t == 2 and crash.pop("armed", False):
            raise KeyboardInterrupt  # the user hits Ctrl-C during task 3, once
        return real_fit(self, t, task)

    monkeypatch.setattr(LightningLearner, "fit_task", crashing_fit)
    assert main(run_args("finetune", out=out)) == 130
    assert _results(out)["completed_tasks"] == 2 and not (out / ".lock").exists()
    calls.clear()
    assert main(run_args("finetune", out=out)) == 0
    assert calls == [2], "only the interrupted task may be trained again"
    a, b = _results(ref), _results(out)
    assert a["acc_matrix"] == b["acc_matrix"], "a resumed run must equal an uninterrupted one"
    # a third call finds the run complete and trains nothing
    calls.clear()
    assert main(run_args("finetune", out=out)) == 0 and calls == []


def test_resume_refuses_another_config(run_args, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(run_args("linear", out=out)) == 0
    before = (out / "results.json").read_bytes()
    assert main(run_args("linear", out=out, extra=["trainer.epochs=3"])) == 2
    assert "another method, backbone or config" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_task_state_round_trips(run_args, tmp_path):
    from omegaconf import OmegaConf

    from recast_bench.backbones import build_backbone
    from recast_bench.data.stream import build_stream
    from recast_bench.engine.build import build_method
    from recast_bench.engine.model import TaskModel

    out = tmp_path / "ft"
    assert main(run_args("finetune", out=out)) == 0
    res = _results(out)
    cfg = OmegaConf.create(res["config"])
    tasks = build_stream(cfg.stream, image_size=32)
    backbone, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    model = TaskModel(backbone, 48)
    method = build_method("finetune", cfg.method, "vit")
    from recast_bench.config import TrainerConfig

    learner = LightningLearner(model, method, TrainerConfig(eval_batch_size=64), 42, res["fingerprint"])
    learner.load_shared(out / "tasks" / "syn2" / "shared.safetensors")
    for t, task in enumerate(tasks):
        learner.load_task(t, task, out / "tasks" / task.name)
    # restoring from disk reproduces exactly the accuracies of the finished run
    assert [learner.evaluate(t, task) for t, task in enumerate(tasks)] == res["acc_matrix"][-1]


def test_checkpoint_from_another_config_is_refused(run_args, tmp_path):
    from recast_bench.config import TrainerConfig
    from recast_bench.data.synthetic import synthetic_task
    from recast_bench.engine.model import TaskModel

    out = tmp_path / "lin"
    assert main(run_args("linear", out=out)) == 0
    from recast_bench.backbones import build_backbone
    from recast_bench.engine.build import build_method

    backbone, _, _ = build_backbone("vit_tiny", allow_random_init=True)
    learner = LightningLearner(TaskModel(backbone, 48), build_method("linear", {}, "vit"), TrainerConfig(), 0, "other")
    task = synthetic_task("syn0", 3, 32, 0, type("C", (), {"train_per_class": 1, "val_per_class": 1,
                                                            "test_per_class": 1, "noise": 0.1}))  # fmt: skip
    with pytest.raises(UserError, match="another backbone or config"):
        learner.load_task(0, task, out / "tasks" / "syn0")


def test_second_run_on_same_out_is_refused(run_args, tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    lock = RunLock(out)
    lock.path.write_text("1")  # pid 1 is alive: another run holds the directory
    assert main(run_args("linear", out=out)) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not (out / "results.json").exists()
    lock.path.unlink()


def test_stale_lock_is_taken_over(run_args, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    (out / ".lock").write_text("999999")  # no such process: a killed run left it behind
    assert main(run_args("linear", out=out)) == 0


def test_same_seed_same_metrics(run_args, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(run_args("finetune", out=a)) == 0
    assert main(run_args("finetune", out=b)) == 0
    ra, rb = _results(a), _results(b)
    assert ra["acc_matrix"] == rb["acc_matrix"] and ra["val_acc"] == rb["val_acc"]
    sa = load_tensors(a / "tasks" / "syn1" / "head.safetensors")
    sb = load_tensors(b / "tasks" / "syn1" / "head.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fingerprint_ignores_execution_only_settings():
    # compile, its backend and cuDNN autotuning change results by float rounding only: a run started before they
    # existed keeps its fingerprint (and resumes), and a run may resume with compilation switched off.
    from recast_bench.engine.loop import fingerprint

    old = {"method_name": "recast", "trainer": {"epochs": 100, "precision": "bf16-mixed", "deterministic": "warn"}}
    new = {
        **old,
        "trainer": {**old["trainer"], "compile": True, "compile_backend": "inductor", "cudnn_benchmark": True},
    }
    assert fingerprint(new) == fingerprint(old)
    assert fingerprint({**old, "trainer": {**old["trainer"], "precision": "32-true"}}) != fingerprint(old)


def test_schema_1_results_gain_schema_2_keys_on_resume():
    from recast_bench.engine.results import new_results, upgrade_results

    res = new_results("linear", "vit_tiny", "synthetic", 0, ["a", "b"], {})
    for key in ("compile", "compile_backend", "timing", "task_switch_ms"):
        res.pop(key)
    res["schema_version"] = 1
    res["versions"] = {"torch": "2.14.1"}
    upgrade_results(res)
    assert res["schema_version"] == 2 and res["timing"] == [None, None] and res["compile"] is None
    assert res["git_commit"] is None and "avalanche" in res["versions"] and res["task_switch_ms"] is None


def test_git_commit_is_null_outside_a_checkout(tmp_path):
    from recast_bench.engine.results import git_commit

    assert git_commit(tmp_path) is None


def test_logger_wandb_without_wandb_is_one_line_and_writes_nothing(run_args, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, as on a machine without it
    out = tmp_path / "nowandb"
    assert main(run_args("linear", out=out, extra=["logger=wandb"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logger=wandb needs the wandb package" in err[0] and "logger=csv" in err[0]
    assert not out.exists()
    assert main(run_args("linear", out=out, extra=["logger=csv", "trainer.epochs=1"])) == 0  # no wandb needed


def test_predictions_of_ddp_shards_are_reassembled_in_test_set_order(monkeypatch):
    # Rank r evaluates items r, r + world, ... (shard_for_rank); rank 0 writes all of them in test-set order.
    from recast_bench.engine import evaluate as ev

    full = torch.arange(11) * 10
    shards = [full[r::3] for r in range(3)]

    def all_gather(outs, t):  # noqa: ANN001, ANN202 (the ranks' tensors, as gloo or NCCL would fill them)
        sizes = t.numel() == 1  # the first gather: each rank's count; the second: each rank's padded shard
        for r, o in enumerate(outs):
            o.copy_(
                torch.tensor([len(shards[r])]) if sizes else torch.nn.functional.pad(shards[r], (0, 4 - len(shards[r])))
            )

    monkeypatch.setattr(ev, "_world", lambda: (0, 3))
    monkeypatch.setattr(ev.dist, "all_gather", all_gather)
    assert torch.equal(ev._gather_shards(shards[0]), full)
