"""Input-pipeline figures: loader images/s on the uint8 device path vs the float CPU path, and the cache's size.

Two sources, measured in the same run: generated 500x375 JPEGs (the size of a typical Flowers/CUB photo; stored as
256 px squares for a 224 px model) and generated 32x32 arrays (CIFAR, stored at 32 px). For each, the loader with
``workers`` workers is timed on the float CPU path (flip, resize, normalise in the workers) and on the uint8 device
path (workers copy uint8 squares; the rest runs on the training device), interleaved, and the ratio reported. The
cache size of the six datasets comes from their official image counts and stored sides, so it needs no data.

Every input-pipeline figure is measured here: ``recast-bench perf`` (:func:`loading_figures`) and ``python -m
recast_bench.data.bench`` (a real dataset's part, or generated JPEGs) are its users. :func:`measure_throughput` times
full passes of a DataLoader yielding training batches over one part: decoding each JPEG (the uncached float path),
then from the uint8 cache on the float CPU path (Avalanche, data-driven method init) and the uint8 device path.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from recast_bench.data.cache import cache_paths, cached_images
from recast_bench.data.device_transforms import BatchTransform, CpuTransform
from recast_bench.data.images import DecodedImages, SplitView, part_side
from recast_bench.data.sources import PAPER_ORDER, SPECS, Records
from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, cache_side
from recast_bench.perf.common import error_reason, unavailable

CIFAR = ("cifar10", "cifar100")


@dataclass(frozen=True)
class LoaderSetup:
    """How the loader is measured: the model's image size, batch, workers and timed passes (after one warm-up)."""

    image_size: int = 224
    batch_size: int = 64
    num_workers: int = 2
    epochs: int = 2


def fake_records(folder: str | Path, n: int, wh: tuple[int, int] = (500, 375), classes: int = 10) -> Records:
    """Write ``n`` photo-like JPEGs (smooth colour fields plus grain, quality 90) and return their Records."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = wh
    files = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.clip(np.asarray(coarse, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=90)
        files.append(f"{i:06d}.jpg")
    return Records(np.arange(n) % classes, files, str(folder))


def fake_cifar(n: int, classes: int = 10) -> Records:
    """``n`` random 32x32 images held in memory, as CIFAR's loader returns them."""
    rng = np.random.default_rng(1)
    return Records(np.arange(n) % classes, arrays=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def first(rec: Records, n: int) -> Records:
    """The first ``n`` records (all of them when there are fewer)."""
    if n >= len(rec):
        return rec
    arrays = rec.arrays[:n] if rec.arrays is not None else None
    return Records(rec.labels[:n], rec.files[:n] if rec.files else None, rec.base, arrays)


def _images_per_s(ds, batch_size: int, num_workers: int, epochs: int) -> float:  # noqa: ANN001
    """Wall-clock images/s over ``epochs`` passes after one warm-up pass (worker start-up, page cache)."""
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, persistent_workers=num_workers > 0
    )
    for _ in loader:  # warm-up
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def _cpu_ms_per_image(ds, batch_size: int) -> float:  # noqa: ANN001
    """CPU time per image of one in-process pass: unlike wall time, not inflated by other jobs on the machine."""
    t0 = time.process_time()
    for _ in DataLoader(ds, batch_size=batch_size, shuffle=True):
        pass
    return 1000 * (time.process_time() - t0) / len(ds)


def _device_ms_per_image(tf: BatchTransform, ds, batch_size: int) -> float:  # noqa: ANN001
    """CPU time per image of the device half run on this CPU (an upper bound: a GPU does it in microseconds)."""
    batches = [x for x, _ in DataLoader(ds, batch_size=batch_size)]
    t0 = time.process_time()
    for x in batches:
        tf(x, tf.draw_flips(len(x)))
    return 1000 * (time.process_time() - t0) / len(ds)


def path_figures(rec: Records, dataset: str, cache_dir: str, setup: LoaderSetup) -> dict:
    """The float CPU path vs the uint8 device path over one cached part, side by side in one run."""
    image_size, batch_size, num_workers, epochs = setup.image_size, setup.batch_size, setup.num_workers, setup.epochs
    side = part_side(rec, image_size)
    cached = cached_images(rec, dataset, "train", side, image_size, cache_dir)
    idx = np.stack([np.zeros(len(rec), np.int64), np.arange(len(rec))], axis=1)
    bt = BatchTransform(image_size, side, IMAGENET_MEAN, IMAGENET_STD)
    float_ds = SplitView([cached], idx, CpuTransform(bt, train=True))
    uint8_ds = SplitView([cached], idx, None)
    # Interleaved (float, uint8, float, uint8) so drift of a shared machine hits both alike; best of two each.
    runs: dict[str, list[float]] = {"float": [], "uint8": []}
    for _ in range(2):
        runs["float"].append(_images_per_s(float_ds, batch_size, num_workers, epochs))
        runs["uint8"].append(_images_per_s(uint8_ds, batch_size, num_workers, epochs))
    f, u = max(runs["float"]), max(runs["uint8"])
    return {
        "stored_side": side,
        "float_cpu_img_s": round(f, 1),
        "uint8_device_img_s": round(u, 1),
        "uint8_over_float": round(u / f, 2),
        "float_cpu_ms_per_img": round(_cpu_ms_per_image(float_ds, batch_size), 3),
        "uint8_cpu_ms_per_img": round(_cpu_ms_per_image(uint8_ds, batch_size), 3),
        "device_half_on_this_cpu_ms_per_img": round(_device_ms_per_image(bt, uint8_ds, batch_size), 3),
        "batch_bytes_float": batch_size * 3 * image_size * image_size * 4,
        "batch_bytes_uint8": batch_size * 3 * side * side,
    }


def cache_size_table(image_size: int = 224, split: str = "official") -> dict:
    """Bytes of the image cache for the six datasets from their official image counts (no data needed).

    ``split="pooled"`` caches MIT67's whole ``Images/`` pool instead of its two official lists. The old layout
    (every image as a ``image_size`` crop, CIFAR upsampled) is given for comparison.
    """
    rows, total, old_total = [], 0, 0
    for name in PAPER_ORDER:
        exp = SPECS[name].expected
        n = exp.pool if split == "pooled" and exp.pool else sum(exp.splits.values())
        side = cache_side(image_size, 32 if name in CIFAR else None)
        size = n * side * side * 3
        old = n * image_size * image_size * 3
        rows.append({"dataset": name, "images": n, "side": side, "bytes": size, "gib": round(size / 2**30, 3)})
        total += size
        old_total += old
    return {
        "image_size": image_size,
        "split": split,
        "datasets": rows,
        "total_bytes": total,
        "total_gib": round(total / 2**30, 2),
        "old_layout_gib": round(old_total / 2**30, 2),
        "target_gib": 8,
        "meets_target": total < 8 * 2**30,
    }


def measure_throughput(
    rec: Records, setup: LoaderSetup = LoaderSetup(), dataset: str = "records", cache_dir: str | None = None
) -> dict:
    """Images/s of training batches over ``rec`` (one part of ``dataset``, named in the cache key): uncached, and
    cached on the float CPU path and the uint8 device path.

    Args:
        cache_dir: where the cache goes; a temporary directory (removed afterwards) when ``None``.

    Returns:
        ``uncached_img_s`` (decode every access, float path), ``cached_img_s`` (cache, float path), ``speedup``;
        ``float_cpu_img_s`` vs ``uint8_device_img_s`` and their ratio ``uint8_over_float`` (wall clock,
        ``num_workers`` workers); ``*_cpu_ms_per_img`` (CPU time per image in one process: robust to other load on
        the machine); ``cache_build_s`` (the one-off decode), sizes.
    """
    image_size, batch_size = setup.image_size, setup.batch_size
    side = part_side(rec, image_size)
    bt = BatchTransform(image_size, side, IMAGENET_MEAN, IMAGENET_STD)
    idx = np.stack([np.zeros(len(rec), np.int64), np.arange(len(rec))], axis=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers do the work; one thread each avoids oversubscribing the cores
    try:
        plain = SplitView([DecodedImages(rec, side, image_size)], idx, CpuTransform(bt, train=True))
        uncached = _images_per_s(plain, batch_size, setup.num_workers, max(1, setup.epochs // 2))
        uncached_cpu = _cpu_ms_per_image(plain, batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            cdir = cache_dir or tmp
            npy, _ = cache_paths(cdir, dataset, "train", side, image_size, rec)
            t0 = time.perf_counter()
            cached_images(rec, dataset, "train", side, image_size, cdir)
            build_s = time.perf_counter() - t0
            paths = path_figures(rec, dataset, cdir, setup)
            cache_bytes = os.path.getsize(npy)
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": dataset,
        "image_size": image_size,
        "images": len(rec),
        "num_workers": setup.num_workers,
        "batch_size": batch_size,
        "uncached_img_s": round(uncached, 1),
        "cached_img_s": paths["float_cpu_img_s"],
        "speedup": round(paths["float_cpu_img_s"] / uncached, 1),
        "uncached_cpu_ms_per_img": round(uncached_cpu, 3),
        **paths,
        "cache_build_s": round(build_s, 2),
        "cache_bytes": cache_bytes,
    }


def loading_figures(images: int, image_size: int, workers: int, batch: int, epochs: int) -> dict[str, Any] | str:
    setup = LoaderSetup(image_size, batch, workers, epochs)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = measure_throughput(fake_records(tmp, images), setup)
        with tempfile.TemporaryDirectory() as tmp:
            cifar = path_figures(fake_cifar(max(images, 4 * batch)), "cifar", tmp, setup)
    except Exception as e:  # noqa: BLE001
        return unavailable(error_reason(e))
    return {
        "source": "generated 500x375 JPEGs, quality 90",
        "epochs": epochs,
        **res,
        "cifar_like": {"source": "generated 32x32 arrays", **cifar},
        "cache_size_six": cache_size_table(image_size),
        "cache_size_six_pooled": cache_size_table(image_size, "pooled")["total_gib"],
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m recast_bench.perf.loading --out FILE``: only these figures, as JSON (``recast-bench perf`` runs
    them among the others)."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args(argv)
    res = loading_figures(a.images, a.size, a.workers, a.batch, a.epochs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
