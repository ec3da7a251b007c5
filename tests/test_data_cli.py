"""``recast-bench data check|download`` (called through the subparser, as the main CLI does)."""

from __future__ import annotations

import argparse
import dataclasses
import shutil

import pytest

from recast_bench.data import cli
from recast_bench.data.sources import SPECS
from recast_bench.errors import UserError


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="recast-bench")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_check_reports_present_and_missing(six_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(six_root, root, ignore=shutil.ignore_patterns("mit67", "CUB_200_2011"))
    assert run("check", "--root", str(root)) == 0  # a report: missing datasets are not an error
    out = capsys.readouterr().out
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "| mit67 | missing | -/67 |" in rows["mit67"] and "| cub200 | missing | -/200 |" in rows["cub200"]
    assert "| flowers102 | counts differ | 3/102 | 6/1020 | 6/1020 | 9/6149 |" in rows["flowers102"]
    assert "| cifar10 | counts differ | 3/10 | 15/50000 | - | 6/10000 |" in rows["cifar10"]
    assert rows["aircraft"].endswith("| 55, 10001 |")  # the paper's Table 3 beside the official counts
    assert "4/6 datasets present." in out
    assert "MIT Indoor 67 not found" in out and "CUB-200-2011 not found" in out


def test_check_flags_an_incomplete_dataset(six_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(six_root / "flowers-102", root / "flowers-102")
    (root / "flowers-102/jpg/image_00002.jpg").unlink()
    assert run("check", "--root", str(root)) == 0
    out = capsys.readouterr().out
    assert "| flowers102 | incomplete |" in out and "image_00002.jpg" in out


def test_check_ok_when_counts_match(six_data, tmp_path, capsys, monkeypatch):
    root, counts = six_data
    c = counts["cub200"]
    exp = dataclasses.replace(
        SPECS["cub200"].expected, classes=c["classes"], splits={"train": c["train"], "test": c["test"]}
    )
    monkeypatch.setitem(SPECS, "cub200", dataclasses.replace(SPECS["cub200"], expected=exp))
    run("check", "--root", str(root))
    assert "| cub200 | ok | 3/3 | 9/9 | - | 6/6 |" in capsys.readouterr().out


def test_download_uses_torchvision_and_explains_manual_ones(tmp_path, capsys, monkeypatch):
    fetched = []
    monkeypatch.setitem(SPECS, "cifar10", dataclasses.replace(SPECS["cifar10"], download=fetched.append))
    assert run("download", "--root", str(tmp_path), "--only", "cifar10,mit67") == 0
    assert fetched == [tmp_path]
    out = capsys.readouterr().out
    assert "mit67: manual download from https://web.mit.edu/torralba/www/indoor.html" in out


def test_download_failure_and_bad_names(tmp_path, capsys, monkeypatch):
    def offline(root):
        raise OSError("network unreachable")

    monkeypatch.setitem(SPECS, "flowers102", dataclasses.replace(SPECS["flowers102"], download=offline))
    assert run("download", "--root", str(tmp_path), "--only", "flowers102") == 1
    assert "flowers102: download failed (OSError: network unreachable)" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        run("download", "--root", str(tmp_path), "--only", "imagenet")


def test_real_downloaders_are_torchvision_with_download_true(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []
    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.Flowers102, tvd.FGVCAircraft):
        monkeypatch.setattr(
            cls, "__init__", lambda self, root, download=False, _c=cls, **kw: calls.append((_c, download))
        )
    for name in ("cifar10", "cifar100", "flowers102", "aircraft"):
        SPECS[name].download(tmp_path)
    assert calls == [(tvd.CIFAR10, True), (tvd.CIFAR100, True), (tvd.Flowers102, True), (tvd.FGVCAircraft, True)]
    assert SPECS["mit67"].download is None and SPECS["cub200"].download is None


def test_prepare_builds_the_cache_once_for_later_runs(six_root, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert run("prepare", "--root", str(six_root), "--cache-dir", str(cache), "--image-size", "32") == 0
    out = capsys.readouterr().out
    assert "cifar10: stored at 32 px for a 32 px model" in out and "flowers102: stored at 37 px" in out
    assert "32 px: 14 cache files" in out
    files = sorted(p.name for p in (cache / "images").iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 14 and not [f for f in files if ".tmp" in f or ".lock" in f]

    import PIL.Image

    from recast_bench.config import compose_config
    from recast_bench.data import build_stream

    def no_decode(*a, **k):
        raise AssertionError("prepare left something to decode")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    cfg = compose_config(["stream=six", f"++stream.root={six_root}"]).stream
    assert len(build_stream(cfg, 32, str(cache))) == 6  # a run after prepare only reads
    assert sorted(p.name for p in (cache / "images").iterdir()) == files


def test_prepare_rejects_bad_input(six_root, tmp_path):
    with pytest.raises(UserError, match="--image-size must be >= 8"):
        run("prepare", "--root", str(six_root), "--cache-dir", str(tmp_path), "--image-size", "0")
    with pytest.raises(UserError, match="stream.cache=false"):
        run("prepare", "--root", str(six_root), "--cache-dir", str(tmp_path), "stream.cache=false")
    with pytest.raises(UserError, match="unknown task 'imagenet'"):
        run("prepare", "--root", str(six_root), "--cache-dir", str(tmp_path), "--tasks", "imagenet")
    assert not (tmp_path / "images").exists()
