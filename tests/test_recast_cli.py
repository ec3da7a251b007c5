"""``recast-bench mimic``: artifacts and report on disk, the ImageNet check on a generated ImageFolder, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from recast_bench.backbones import build_backbone
from recast_bench.cli import main
from recast_bench.recast.pipeline import load_recast_model


def test_mimic_writes_artifacts_and_report(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["mimic", "--backbone", "vit_tiny", "--groups", "2", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    argv += ["--plots", "--init", "svd"]  # ours, exact: the similarity checks below are exact
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["per_task_params"] == 32 and summary["from_cache"] is False
    for f in (
        "recast.safetensors",
        "recast.json",
        "report.json",
        "plots/diversity.png",
        "plots/feature_similarity.png",
    ):
        assert (out / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    assert report["weight_cosine"]["min"] >= 0.9999 and report["outputs"]["logits_cosine"] >= 0.9999
    assert len(report["outputs"]["feature_cosine"]) == 4
    assert set(report["diversity"]["groups"]) == {"0", "1"}
    assert report["seconds"]["total"] > 0 and report["memory"]["peak_rss_mb"] > 0
    # the artifact loads into a fresh backbone
    fresh = build_backbone("vit_tiny", allow_random_init=True)[0]
    assert load_recast_model(fresh, out).per_task_params() == 32
    # second run: served from the cache
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["from_cache"] is True


def test_mimic_user_errors_exit_2(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["mimic", "--backbone", "vit_tiny", "--groups", "3", "--out", str(out), "--cache-dir", ""]) == 2
    assert "must divide the 4 blocks" in capsys.readouterr().err
    assert not out.exists()
    assert main(["mimic", "--backbone", "vit_tiny", "--loss", "kl", "--out", str(out)]) == 2
    assert "loss" in capsys.readouterr().err
    assert main(["mimic", "--backbone", "nope", "--out", str(out)]) == 2


@pytest.fixture()
def tiny_imagenet(tmp_path):
    """A 3-class ImageFolder (JPEG) and a vit_tiny weight file that includes a 3-way classifier head."""
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", allow_random_init=True)[0]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["head.weight"] = torch.randn(3, 48)
    state["head.bias"] = torch.zeros(3)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file(state, str(weights))
    rng = np.random.default_rng(0)
    root = tmp_path / "val"
    for wnid in ("n01440764", "n01443537", "n01484850"):
        (root / wnid).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")
    return weights, root


def test_imagenet_check_on_generated_folder(tmp_path, tiny_imagenet, capsys):
    weights, root = tiny_imagenet
    out = tmp_path / "mi"
    argv = ["mimic", "--backbone", "vit_tiny", "--weights", str(weights), "--groups", "2", "--out", str(out)]
    assert main([*argv, "--imagenet-val", str(root), "--cache-dir", ""]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["classifier"] == "pretrained"
    inet = report["imagenet"]
    assert inet["images"] == 6 and inet["top1_agreement"] == 1.0
    assert inet["top1_original"] == inet["top1_reconstructed"]
    # The summary line keeps the one-batch similarity check apart from the ImageNet figures (never read as top-1).
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["imagenet"] == {
        k: inet[k] for k in ("images", "top1_original", "top1_reconstructed", "top1_agreement")
    }
    assert summary["batch_check"]["inputs"] == "first imagenet-val batch" and "top1_agreement" not in summary
    assert summary["batch_check"]["images"] == report["outputs"]["images"] <= 6


def test_imagenet_check_rejects_mismatched_folder(tmp_path, tiny_imagenet, capsys):
    weights, root = tiny_imagenet
    (root / "n09999999").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "n09999999" / "x.JPEG")
    argv = ["mimic", "--backbone", "vit_tiny", "--weights", str(weights), "--groups", "2", "--out", str(tmp_path / "o")]
    assert main([*argv, "--imagenet-val", str(root), "--cache-dir", ""]) == 2
    assert "4 class folders but the classifier has 3 outputs" in capsys.readouterr().err
