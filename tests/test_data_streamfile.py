"""Streams from a file: ImageFolder and CSV tasks in real image files, mixed with a built-in dataset; split hashes a
user can recompute; ``data check --stream``; every bad stream as one line and exit 2; the cache reused and rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
from fixtures.datasets import write_cifar10
from fixtures.userdata import COLOURS, image, user_stream, write_csv_task, write_image_folder, write_stream

from recast_bench.cli import main
from recast_bench.config import compose_config
from recast_bench.data import build_stream
from recast_bench.data.hashes import split_hashes
from recast_bench.data.images import CachedImages
from recast_bench.data.splits import plan_splits
from recast_bench.data.streamfile import read_stream_file
from recast_bench.data.user import load_image_folder
from recast_bench.errors import UserError

ODD = "my data = v2, final"  # '=', ',' and spaces: a Hydra override parser would choke on this path


@pytest.fixture
def stream_dir(tmp_path):
    d = tmp_path / ODD
    d.mkdir()
    write_cifar10(d / "builtin")
    return d


def file_cfg(path, root=None, *overrides: str):
    cfg = compose_config(list(overrides))
    cfg.stream.file = str(path)  # what `run --stream PATH.yaml` attaches after composing
    if root is not None:
        cfg.stream.root = str(root)
    return cfg.stream


def recipe(lines) -> str:  # noqa: ANN001
    """The README's recipe: SHA-256 of the sorted 'file<TAB>label<TAB>split<NEWLINE>' lines, UTF-8."""
    return hashlib.sha256("".join(sorted(f"{f}\t{y}\t{s}\n" for f, y, s in lines)).encode("utf-8")).hexdigest()


def test_both_layouts_and_a_builtin_build_like_the_six(stream_dir, tmp_path):
    path = user_stream(stream_dir, builtin="cifar10")
    tasks = build_stream(file_cfg(path, stream_dir / "builtin"), 32, str(tmp_path / "cache"))
    assert [t.name for t in tasks] == ["primaries", "mixes", "cifar10"]
    prim, mixes, cifar = tasks
    assert prim.class_names == ["blue", "green", "red"] and mixes.class_names == ["cyan", "magenta", "yellow"]
    assert cifar.class_names == ["class0", "class1", "class2"]
    # primaries has no val folder: 10 % of train held out exactly as the built-in datasets do it
    src = load_image_folder("primaries", stream_dir / "data" / "primaries")
    _, index = plan_splits(src, "official", 0.1, [0.7, 0.15, 0.15], seed=0)
    assert np.array_equal(prim.val.index, index["val"]) and np.array_equal(prim.train.index, index["train"])
    assert prim.sizes() == {"train": 22, "val": 2, "test": 12} and prim.info["val"].startswith("held out of train")
    assert mixes.sizes() == {"train": 24, "val": 6, "test": 12} and mixes.info["val"] == "official val split"
    # the same uint8 cache and device transform as the six: 20x16 images stored at their own 16 px side
    for t in (prim, mixes):
        assert all(isinstance(p, CachedImages) for p in t.train.parts) and t.batch_transform.source == 16
        assert t.uint8("test")[0][0].shape == (3, 16, 16) and t.test[0][0].shape == (3, 32, 32)
        for i in (0, len(t.test) - 1):  # each image carries its class's colour
            x, y = t.uint8("test")[i]
            assert np.abs(x.float().mean((1, 2)).numpy() - COLOURS[t.class_names[y]]).max() < 12
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 2 + 3 + 2


def test_split_hashes_follow_the_documented_recipe(stream_dir, tmp_path):
    path = user_stream(stream_dir, builtin="cifar10")
    tasks = build_stream(file_cfg(path, stream_dir / "builtin"), 32, None)
    hashes = split_hashes(tasks)
    prim_root, mix_dir = stream_dir / "data" / "primaries", stream_dir / "data" / "mixes"
    # ImageFolder: paths relative to the task root, '/' separators, class folder as label
    test_lines = [
        (p.relative_to(prim_root).as_posix(), p.parent.name, "test") for p in (prim_root / "test").rglob("*.png")
    ]
    assert hashes["primaries"]["test"] == recipe(test_lines)
    # the held-out val keeps its train/... paths; train and val together are every train image
    train_files = {p.relative_to(prim_root).as_posix(): p.parent.name for p in (prim_root / "train").rglob("*.png")}
    val_ids = set(tasks[0].row_ids["val"])
    assert val_ids < set(train_files)
    assert hashes["primaries"]["val"] == recipe([(f, train_files[f], "val") for f in val_ids])
    assert hashes["primaries"]["train"] == recipe([(f, y, "train") for f, y in train_files.items() if f not in val_ids])
    # CSV: the path cell as written, the label cell, the split cell
    with open(mix_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for split in ("train", "val", "test"):
        assert hashes["mixes"][split] == recipe([(r["path"], r["label"], split) for r in rows if r["split"] == split])
    # built-in arrays: '<part>:<row>' and the dataset's class names
    assert all(f.startswith("test:") for f in tasks[2].row_ids["test"])
    assert hashes["cifar10"]["test"] == recipe([(f"test:{i}", f"class{i // 2}", "test") for i in range(6)])
    # a sample limit hashes only the rows it keeps
    limited = build_stream(file_cfg(path, stream_dir / "builtin", "++stream.max_eval_per_task=3"), 32, None)
    lim = limited[1]
    assert len(lim.row_ids["test"]) == 3 and split_hashes(limited)["mixes"]["test"] != hashes["mixes"]["test"]
    kept = [(f, lim.class_names[y], "test") for f, (_, y) in zip(lim.row_ids["test"], lim.test)]
    assert split_hashes(limited)["mixes"]["test"] == recipe(kept)


def test_data_check_prints_counts_and_hashes(stream_dir, capsys):
    path = user_stream(stream_dir, builtin="cifar10")
    assert main(["data", "check", "--stream", str(path), "--root", str(stream_dir / "builtin")]) == 0
    out = capsys.readouterr().out
    assert "| primaries | 3 | 22 | 2 | 12 | 7 | held out of train (10%) | ImageFolder " in out
    assert "| mixes | 3 | 24 | 6 | 12 | 8 | official val split | CSV " in out and "| cifar10 | 3 | 14 | 1 | 6 |" in out
    expected = split_hashes(build_stream(file_cfg(path, stream_dir / "builtin"), 224, None))
    for task, splits in expected.items():
        for split, digest in splits.items():
            assert any(line.split() == [task, split, digest] for line in out.splitlines()), (task, split)
    assert main(["data", "check", "--stream", str(path), "--root", str(stream_dir / "builtin"), "--json",
                 "stream.val_fraction=0.25"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["stream"] == "colours" and doc["file"] == str(path)
    assert doc["tasks"][0]["counts"] == {"train": 18, "val": 6, "test": 12}  # the override moved the hold-out
    assert doc["tasks"][1]["split_hashes"] == expected["mixes"]  # its own val: unchanged


# ---- bad streams: one line, exit 2 ----------------------------------------------------------------------------------


def _folder(d):  # noqa: ANN001, ANN202
    write_image_folder(d / "t", classes=("red", "blue"), per_split=(("train", 3), ("test", 2)))
    return "  - name: t\n    root: t\n"


def _csv(d, rows=None, header="path,label,split"):  # noqa: ANN001, ANN202
    write_csv_task(d / "c", classes=("cyan", "yellow"), per_split=(("train", 3), ("test", 2)))
    if rows is not None:
        (d / "c" / "manifest.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return "  - name: c\n    csv: c/manifest.csv\n"


def _rm(p) -> None:  # noqa: ANN001
    shutil.rmtree(p) if p.is_dir() else p.unlink()


BAD = {
    "missing folder": (lambda d: "  - name: t\n    root: nowhere\n", "folder .*nowhere not found"),
    "missing csv": (lambda d: "  - name: c\n    csv: none.csv\n", "file .*none.csv not found"),
    "no test folder": (lambda d: (_folder(d), _rm(d / "t" / "test"))[0], "t/test not found"),
    "csv without column": (lambda d: _csv(d, ["images/0000.jpg,cyan"], "path,label"), "lacks the column 'split'"),
    "unknown csv split": (
        lambda d: _csv(d, ["images/0000.jpg,cyan,train", "images/0001.jpg,cyan,valid"]),
        "line 3 has the unknown split 'valid'",
    ),
    "unknown split folder": (
        lambda d: (_folder(d), (d / "t" / "validation").mkdir())[0],
        "unknown split folder .*validation",
    ),
    "label absent from train (csv)": (
        lambda d: _csv(d, ["images/0000.jpg,cyan,train", "images/0001.jpg,pink,test"]),
        "label 'pink' .* is absent from train",
    ),
    "label absent from train (folder)": (
        lambda d: (_folder(d), shutil.copytree(d / "t/test/red", d / "t/test/pink"))[0],
        "class 'pink' of .* is absent from train",
    ),
    "empty test split (csv)": (lambda d: _csv(d, ["images/0000.jpg,cyan,train"]), "the test split is empty"),
    "empty val folder": (
        lambda d: (_folder(d), (d / "t" / "val" / "red").mkdir(parents=True))[0],
        "the val split is empty",
    ),
    "duplicate task names": (lambda d: _folder(d) + _folder(d), "task name 't' appears twice"),
    "listed image missing": (lambda d: (_csv(d), _rm(d / "c/images/0001.jpg"))[0], "1 of 6 train images .* missing"),
    "file listed twice": (
        lambda d: _csv(d, ["images/0000.jpg,cyan,train", "images/0000.jpg,cyan,test"]),
        "lists images/0000.jpg twice",
    ),
    "undecodable image": (
        lambda d: (_folder(d), (d / "t/train/red/001.png").write_bytes(b"not a png"))[0],
        "cannot decode image .*t/train/red/001.png",
    ),
    "reserved name": (lambda d: "  - name: auto\n    root: t\n", "name 'auto' is reserved"),
    "unknown key": (lambda d: "  - name: t\n    folder: t\n", "unknown key 'folder'"),
    "not a built-in": (lambda d: "  - name: imagenet\n", "needs root: .*, csv: .* or a built-in dataset name"),
    "bad name": (lambda d: "  - name: a/b\n    root: t\n", "task name 'a/b' must be"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_stream_is_one_line_and_exit_2(tmp_path, capsys, case):
    d = tmp_path / ODD
    d.mkdir()
    tasks, message = BAD[case]
    path = write_stream(d, "name: bad\ntasks:\n" + tasks(d))
    assert main(["data", "check", "--stream", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err


def test_run_refuses_a_bad_stream_before_writing_anything(tmp_path, capsys):
    d = tmp_path / ODD
    d.mkdir()
    path = write_stream(d, "name: bad\ntasks:\n" + _csv(d, ["images/0000.jpg,cyan,train", "images/0001.jpg,cyan,dev"]))
    out = tmp_path / "run"
    argv = ["run", "--method", "linear", "--stream", str(path), "--out", str(out), "logger=none"]
    assert main(argv) == 2
    assert "unknown split 'dev'" in capsys.readouterr().err and not out.exists()
    assert main([*argv[:4], str(d / "absent.yaml"), *argv[5:]]) == 2
    assert "stream file" in capsys.readouterr().err and not out.exists()


def test_stream_file_parsing_rules(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    path = write_stream(d, "tasks:\n  - cifar10\n  - dataset: cub200\n    name: birds\n    data_root: ../elsewhere\n")
    spec = read_stream_file(path)
    assert spec.name == "stream" and [t.name for t in spec.tasks] == ["cifar10", "birds"]  # name: the file's stem
    assert spec.tasks[1].dataset == "cub200" and spec.tasks[1].data_root == (tmp_path / "elsewhere")
    with pytest.raises(UserError, match="unknown key 'val_fraction'.*stream.val_fraction"):
        read_stream_file(write_stream(d, "name: x\nval_fraction: 0.2\ntasks: [cifar10]\n"))
    with pytest.raises(UserError, match="one of root, csv or dataset, not root and csv"):
        read_stream_file(write_stream(d, "name: x\ntasks:\n  - {name: a, root: a, csv: b.csv}\n"))
    with pytest.raises(UserError, match="not readable YAML"):
        read_stream_file(write_stream(d, "name: [x\n"))


# ---- the cache -------------------------------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_the_files_change(tmp_path, monkeypatch):
    path = user_stream(tmp_path)
    cache = tmp_path / "cache"
    build_stream(file_cfg(path), 32, str(cache))
    first = {p.name: p.stat().st_mtime_ns for p in (cache / "images").glob("*.npy")}
    assert len(first) == 5

    def no_decode(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("an image was opened: the cache (or the header scan's) was not used")

    with monkeypatch.context() as m:  # another split seed (val hold-out) and a fresh process reuse everything
        m.setattr(PIL.Image, "open", no_decode)
        build_stream(file_cfg(path, None, "++stream.seed=5"), 32, str(cache))
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "images").glob("*.npy")} == first
    # one more train image: a new train entry; test is reused
    rng = np.random.default_rng(9)
    image(rng, "red").save(tmp_path / "data/primaries/train/red/100.png")
    (t, _) = build_stream(file_cfg(path), 32, str(cache))
    now = {p.name for p in (cache / "images").glob("*.npy")}
    assert len(now) == 6 and len(t.train) + len(t.val) == 25
    # the same file name with other pixels (size and time change): rebuilt too
    target = tmp_path / "data/primaries/test/red/000.png"
    image(rng, "red", wh=(24, 16)).save(target)
    os.utime(target, ns=(1, 1))
    build_stream(file_cfg(path), 32, str(cache))
    assert len({p.name for p in (cache / "images").glob("*.npy")}) == 7


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_bench_takes_a_stream_file(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    top = tmp_path / "Makefile"
    top.write_text(f"VENV := .venv\nPY := $(VENV)/bin/python\nBIN := $(VENV)/bin\ninclude {root}/mk/bench.mk\n")
    path = user_stream(tmp_path / "own")
    args = ["BACKBONE=vit_tiny", f"STREAM={path}", "TINY=1", "SEEDS=1", "BENCH_RUN_METHODS=linear recast"]
    cmd = ["make", "-n", "-f", str(top), "_bench-run", *args, f"BENCH_ROOT={tmp_path}/bench"]
    text = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    runs = [ln for ln in text.splitlines() if "recast-bench run " in ln]
    assert len(runs) == 2 and all(f"--stream {path} " in ln for ln in runs)
    assert all(f"--out {tmp_path}/bench/vit_tiny-stream/" in ln for ln in runs)  # named after the file
    show = ["make", "-s", "-f", str(top), "--eval", "show-cost: ; @echo $(BENCH_COST)", "show-cost"]
    costs = [
        subprocess.run([*show, f"STREAM={s}"], cwd=root, capture_output=True, text=True).stdout for s in (path, "six")
    ]
    assert costs == ["0\n", "1\n"]  # no cost estimate for a stream file; built-in streams keep theirs
