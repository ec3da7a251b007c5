"""Frozen-feature caching for ``linear`` and the device input path end to end, on the fixture six-dataset stream.

Tolerance: training the head on cached features must give the same accuracy matrix, validation accuracies and
best epochs as training through the backbone with the same seeded flips (features differ only by float rounding of
batched matmuls, ~1e-6, which does not change a prediction here); the heads' weights agree to 1e-4.
"""

from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from baselines.linear import Linear
from recast_bench.cli import main
from recast_bench.engine import learner as learner_mod
from recast_bench.engine.checkpoint import load_tensors

TASKS = "[flowers102,cifar10]"


def run(six_root, tmp_path, out, method="linear", seed=0, cache="cache", extra=()):  # noqa: ANN001, ANN201
    argv = ["run", "--method", method, "--backbone", "vit_tiny", "--stream", "six", "--out", str(tmp_path / out),
            f"stream.root={six_root}", f"++stream.tasks={TASKS}", f"paths.cache_dir={tmp_path / cache}",
            "trainer=tiny", "trainer.epochs=3", "trainer.batch_size=4", "backbone.allow_random_init=true",
            "logger=none", f"seed={seed}", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


@pytest.fixture
def forwards(monkeypatch):
    """Counts ViT forward calls (the backbone of every run here)."""
    calls = {"n": 0}
    real = VisionTransformer.forward

    def counted(self, x):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(VisionTransformer, "forward", counted)
    return calls


def test_cached_features_equal_training_through_the_backbone(six_root, tmp_path, monkeypatch, forwards):
    cached = run(six_root, tmp_path, "cached")
    assert forwards["n"] > 0 and list((tmp_path / "cache" / "features").glob("*.safetensors"))
    # train split stored for both flips, val/test unflipped
    shapes = {p.name.split("-")[1]: load_tensors(p)["features"].shape for p in (tmp_path / "cache/features").iterdir()}
    assert shapes["train"][1] == 2 and shapes["val"][1] == 1 and shapes["test"][1] == 1

    monkeypatch.setattr(Linear, "frozen_backbone_features", False)  # the image path through the backbone
    plain = run(six_root, tmp_path, "plain", cache="cache2")
    assert not (tmp_path / "cache2" / "features").exists()
    for key in ("acc_matrix", "val_acc", "best_epoch"):
        assert cached[key] == plain[key], key
    for task in ("flowers102", "cifar10"):
        a = load_tensors(tmp_path / "cached" / "tasks" / task / "head.safetensors")
        b = load_tensors(tmp_path / "plain" / "tasks" / task / "head.safetensors")
        assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_second_run_and_other_seed_hit_the_feature_cache(six_root, tmp_path, forwards):
    from safetensors.torch import save_file

    from recast_bench.backbones.vit import tiny_vit

    # One weight file for every seed (a random-init backbone would differ per seed, and rightly miss the cache).
    torch.manual_seed(0)
    save_file(tiny_vit().state_dict(), str(tmp_path / "vit_tiny.safetensors"))
    weights = [f"paths.weights_dir={tmp_path}"]
    first = run(six_root, tmp_path, "a", extra=weights)
    assert forwards["n"] > 0
    forwards["n"] = 0
    again = run(six_root, tmp_path, "b", extra=weights)
    other_seed = run(six_root, tmp_path, "c", seed=1, extra=weights)
    assert forwards["n"] == 0, "the backbone ran although every feature was cached"
    assert again["acc_matrix"] == first["acc_matrix"]
    assert other_seed["fingerprint"] != first["fingerprint"]


def test_feature_cache_key_follows_weights_rows_and_transform(six_root, tmp_path):
    from recast_bench.backbones.vit import tiny_vit
    from recast_bench.config import compose_config
    from recast_bench.data import build_stream
    from recast_bench.engine.features import FeatureCache
    from recast_bench.engine.model import TaskModel

    cfg = compose_config(["stream=six", f"++stream.root={six_root}", "++stream.tasks=[cub200]"]).stream
    (task,) = build_stream(cfg, 32, str(tmp_path / "c"))
    torch.manual_seed(0)
    model = TaskModel(tiny_vit(), 48)
    cache = FeatureCache(model, str(tmp_path), torch.device("cpu"))
    base = cache._path(task, "train", 2)
    assert base == FeatureCache(model, str(tmp_path), torch.device("cpu"))._path(task, "train", 2)
    assert base != cache._path(task, "test", 1)
    assert base != FeatureCache(model, str(tmp_path), torch.device("cpu"), precision="bf16-mixed")._path(
        task, "train", 2
    )
    with torch.no_grad():
        model.backbone.cls_token.add_(1e-3)  # other weights: other features
    assert base != FeatureCache(model, str(tmp_path), torch.device("cpu"))._path(task, "train", 2)
    few = compose_config(["stream=six", f"++stream.root={six_root}", "++stream.tasks=[cub200]",
                          "++stream.max_train_per_task=4"]).stream  # fmt: skip
    (limited,) = build_stream(few, 32, str(tmp_path / "c"))
    fresh = FeatureCache(model, str(tmp_path), torch.device("cpu"))
    assert fresh._path(limited, "train", 2) != fresh._path(task, "train", 2)  # other rows


def test_six_stream_resume_replays_device_flips(six_root, tmp_path, monkeypatch):
    """finetune trains through the backbone with flips drawn on the device path: a resumed run equals a whole one."""
    ref = run(six_root, tmp_path, "ref", method="finetune")
    real_fit = learner_mod.LightningLearner.fit_task
    crash = {"armed": True}

    def crashing_fit(self, t, task):  # noqa: ANN001, ANN202
        if t == 1 and crash.pop("armed", False):
            raise KeyboardInterrupt
        return real_fit(self, t, task)

    monkeypatch.setattr(learner_mod.LightningLearner, "fit_task", crashing_fit)
    argv_out = tmp_path / "int"
    with pytest.raises(AssertionError):  # main returns 130 on Ctrl-C; run() asserts 0
        run(six_root, tmp_path, "int", method="finetune")
    assert json.loads((argv_out / "results.json").read_text())["completed_tasks"] == 1
    resumed = run(six_root, tmp_path, "int", method="finetune")
    assert resumed["acc_matrix"] == ref["acc_matrix"] and resumed["val_acc"] == ref["val_acc"]


def test_weights_hash_covers_every_tensor_kind():
    from recast_bench.backbones.resnet import build_resnet_tiny
    from recast_bench.engine.features import weights_hash

    torch.manual_seed(0)
    net = build_resnet_tiny()  # BN layers: float buffers and 0-dim int64 counters
    a = weights_hash(net)
    net.bn1.num_batches_tracked += 1
    assert weights_hash(net) != a
