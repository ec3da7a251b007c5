"""The uint8 memory-mapped cache: built once, hit without decoding, identical to decoding, written atomically."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from recast_bench.config import compose_config
from recast_bench.data import build_stream
from recast_bench.data.cache import cache_paths, cached_images
from recast_bench.data.images import CachedImages
from recast_bench.data.sources import load_source
from recast_bench.errors import UserError
from recast_bench.perf.loading import LoaderSetup, cache_size_table, first, measure_throughput

JPEG_TASKS = "[flowers102,aircraft,mit67,cub200]"


def stream_cfg(root, *overrides: str):
    return compose_config(["stream=six", f"++stream.root={root}", *overrides]).stream


def all_raw(tasks) -> dict[str, torch.Tensor]:
    return {
        f"{t.name}/{s}": torch.stack([d.raw(i) for i in range(len(d))])
        for t in tasks
        for s, d in (("train", t.train), ("val", t.val), ("test", t.test))
    }


def test_second_build_hits_the_cache_without_decoding(six_root, tmp_path, monkeypatch):
    first = build_stream(stream_cfg(six_root), 32, str(tmp_path))
    assert all(isinstance(p, CachedImages) for t in first for p in t.train.parts)
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 14 and not [f for f in files if ".tmp" in f]

    def no_decode(*a, **k):
        raise AssertionError("the cache was not used: an image was decoded")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    second = build_stream(stream_cfg(six_root), 32, str(tmp_path))
    a, b = all_raw(first), all_raw(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == files  # nothing rebuilt


def test_cached_equals_uncached(six_root, tmp_path):
    cached = build_stream(stream_cfg(six_root), 32, str(tmp_path))
    plain = build_stream(stream_cfg(six_root, "++stream.cache=false"), 32, str(tmp_path))
    assert not any(isinstance(p, CachedImages) for t in plain for p in t.train.parts)
    a, b = all_raw(cached), all_raw(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    x = [cached[0].test[i][0] for i in range(3)]
    torch.manual_seed(1)
    assert all(torch.equal(u, v) for u, v in zip(x, [plain[0].test[i][0] for i in range(3)]))


def test_cache_key_depends_on_size_and_file_list(six_root, tmp_path):
    rec = load_source("cub200", six_root).splits["train"]
    p37, _ = cache_paths(tmp_path, "cub200", "train", 37, 32, rec)
    p55, _ = cache_paths(tmp_path, "cub200", "train", 55, 48, rec)
    p37_other_crop, _ = cache_paths(tmp_path, "cub200", "train", 37, 33, rec)  # the square's offset follows the model
    rec.files = rec.files[::-1]
    rec.labels = rec.labels[::-1].copy()
    p37_reordered, _ = cache_paths(tmp_path, "cub200", "train", 37, 32, rec)
    assert len({p37, p55, p37_other_crop, p37_reordered}) == 4
    ds = cached_images(rec, "cub200", "train", 55, 48, tmp_path)
    assert np.load(ds.path, mmap_mode="r").shape == (len(rec), 55, 55, 3)
    meta = json.loads(cache_paths(tmp_path, "cub200", "train", 55, 48, rec)[1].read_text())
    assert meta["labels"] == rec.labels.tolist() and (meta["side"], meta["size"]) == (55, 48) and meta["version"] == 2


def test_cifar_cache_is_native_32px_whatever_the_model_size(six_root, tmp_path):
    rec = load_source("cifar10", six_root).splits["train"]
    a, _ = cache_paths(tmp_path, "cifar10", "train", 32, 224, rec)
    b, _ = cache_paths(tmp_path, "cifar10", "train", 32, 384, rec)
    assert a == b and a.name.startswith("cifar10-train-32px-")
    (t,) = build_stream(stream_cfg(six_root, "++stream.tasks=[cifar10]"), 224, str(tmp_path))
    assert t.train.parts[0].array.shape == (15, 32, 32, 3) and t.batch_transform.source == 32
    assert t.train[0][0].shape == (3, 224, 224)  # the float CPU path still gives model-sized images


def test_stale_or_broken_sidecar_rebuilds(six_root, tmp_path):
    rec = load_source("mit67", six_root).splits["test"]
    ds = cached_images(rec, "mit67", "test", 37, 32, tmp_path)
    npy, meta = cache_paths(tmp_path, "mit67", "test", 37, 32, rec)
    good = np.load(npy).copy()
    np.save(npy, np.zeros_like(good))  # tampered array, valid shape: the sidecar still matches -> trusted
    meta.write_text("{not json")  # ... but a broken sidecar forces a rebuild
    ds = cached_images(rec, "mit67", "test", 37, 32, tmp_path)
    assert np.array_equal(np.load(ds.path), good)


def test_failed_build_leaves_no_file(six_root, tmp_path):
    rec = load_source("cub200", six_root).splits["test"]
    (six_root.parent / "broken").mkdir(exist_ok=True)
    bad = six_root.parent / "broken" / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    rec.files[1] = str(bad)  # an absolute path wins in os.path.join
    with pytest.raises(UserError, match="cannot decode .*x.jpg"):
        cached_images(rec, "cub200", "test", 37, 32, tmp_path)
    assert list((tmp_path / "images").iterdir()) == []  # no array, sidecar, temporary or lock file left


def test_measure_throughput_reports_both_paths(six_root):
    rec = first(load_source("flowers102", str(six_root)).splits["train"], 4)
    out = measure_throughput(rec, LoaderSetup(32, num_workers=0, epochs=1), "flowers102")
    assert (
        out["images"] == 4
        and out["uncached_img_s"] > 0
        and out["cached_img_s"] > 0
        and out["cache_bytes"] == 4 * 37 * 37 * 3 + 128  # squares at the resize target, 37 px for 32
        and out["float_cpu_img_s"] > 0
        and out["uint8_device_img_s"] > 0
        and out["uint8_over_float"] == round(out["uint8_device_img_s"] / out["float_cpu_img_s"], 2)
    )


def test_cache_size_table_from_official_counts():
    t = cache_size_table(224)
    rows = {r["dataset"]: r for r in t["datasets"]}
    assert rows["cifar10"]["side"] == rows["cifar100"]["side"] == 32 and rows["cub200"]["side"] == 256
    assert rows["cifar10"]["bytes"] == 60000 * 32 * 32 * 3 and rows["flowers102"]["images"] == 1020 + 1020 + 6149
    assert t["total_bytes"] == sum(r["bytes"] for r in t["datasets"]) and t["meets_target"]
    assert t["old_layout_gib"] > 20  # every image as a 224 px crop, CIFAR upsampled
    assert cache_size_table(224, "pooled")["total_bytes"] > t["total_bytes"]  # MIT67's whole pool


def test_perf_loading_figures_report_both_paths_and_the_cache_size():
    from recast_bench.perf.common import non_finite_fields
    from recast_bench.perf.loading import loading_figures

    res = loading_figures(images=8, image_size=32, workers=0, batch=4, epochs=1)
    assert isinstance(res, dict), res
    assert non_finite_fields(res) == []
    for fig in (res, res["cifar_like"]):
        assert fig["float_cpu_img_s"] > 0 and fig["uint8_device_img_s"] > 0 and fig["uint8_over_float"] > 0
    assert res["cifar_like"]["stored_side"] == 32 and res["stored_side"] == 37
    assert res["cache_size_six"]["image_size"] == 32 and res["cache_size_six_pooled"] > 0
