"""Input-pipeline throughput and cache size.

``measure_throughput`` times full passes of a DataLoader yielding training batches over one split: decoding each
JPEG (the uncached float path), then from the uint8 cache on the two paths the engine has: the float CPU path (flip,
resize, normalise in the loader workers: Avalanche, data-driven method init) and the uint8 device path (workers
only copy uint8 squares; flip, resize and normalise run on the training device). ``cache_size_table`` computes the
cache's size for the six datasets from their official image counts and stored sides. ``python -m
recast_bench.data.bench --fake 512`` measures on generated 500x375 JPEGs when no dataset is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from recast_bench.data.cache import cache_paths, cached_images
from recast_bench.data.device_transforms import BatchTransform, CpuTransform
from recast_bench.data.images import DecodedImages, SplitView, part_side
from recast_bench.data.sources import PAPER_ORDER, SPECS, Records, load_source
from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, cache_side

CIFAR = ("cifar10", "cifar100")


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


def _head(rec: Records, n: int) -> Records:
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


def path_figures(
    rec: Records, dataset: str, cache_dir: str, image_size: int, batch_size: int, num_workers: int, epochs: int
) -> dict:
    """The float CPU path vs the uint8 device path over one cached part, side by side in one run."""
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


def fake_cifar(n: int, classes: int = 10) -> Records:
    """``n`` random 32x32 images held in memory, as CIFAR's loader returns them."""
    rng = np.random.default_rng(1)
    return Records(np.arange(n) % classes, arrays=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


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
    dataset: str = "flowers102",
    root: str = "data",
    image_size: int = 224,
    max_images: int = 512,
    part: str = "train",
    cache_dir: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    epochs: int = 2,
    records: Records | None = None,
) -> dict:
    """Images/s of training batches on ``max_images`` images of ``dataset``'s ``part``: uncached, and cached on
    the float CPU path and the uint8 device path.

    Args:
        records: measure these instead of reading ``dataset`` under ``root`` (e.g. :func:`fake_records`).
        cache_dir: where the cache goes; a temporary directory (removed afterwards) when ``None``.
        epochs: timed passes per measurement, after one warm-up pass.

    Returns:
        ``uncached_img_s`` (decode every access, float path), ``cached_img_s`` (cache, float path), ``speedup``;
        ``float_cpu_img_s`` vs ``uint8_device_img_s`` and their ratio ``uint8_over_float`` (wall clock,
        ``num_workers`` workers); ``*_cpu_ms_per_img`` (CPU time per image in one process: robust to other load on
        the machine); ``cache_build_s`` (the one-off decode), sizes.
    """
    rec = _head(records if records is not None else load_source(dataset, root).splits[part], max_images)
    side = part_side(rec, image_size)
    bt = BatchTransform(image_size, side, IMAGENET_MEAN, IMAGENET_STD)
    idx = np.stack([np.zeros(len(rec), np.int64), np.arange(len(rec))], axis=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers do the work; one thread each avoids oversubscribing the cores
    try:
        plain = SplitView([DecodedImages(rec, side, image_size)], idx, CpuTransform(bt, train=True))
        uncached = _images_per_s(plain, batch_size, num_workers, max(1, epochs // 2))
        uncached_cpu = _cpu_ms_per_image(plain, batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            cdir = cache_dir or tmp
            npy, _ = cache_paths(cdir, dataset, part, side, image_size, rec)
            t0 = time.perf_counter()
            cached_images(rec, dataset, part, side, image_size, cdir)
            build_s = time.perf_counter() - t0
            paths = path_figures(rec, dataset, cdir, image_size, batch_size, num_workers, epochs)
            cache_bytes = os.path.getsize(npy)
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": dataset if records is None else "records",
        "image_size": image_size,
        "images": len(rec),
        "num_workers": num_workers,
        "batch_size": batch_size,
        "uncached_img_s": round(uncached, 1),
        "cached_img_s": paths["float_cpu_img_s"],
        "speedup": round(paths["float_cpu_img_s"] / uncached, 1),
        "uncached_cpu_ms_per_img": round(uncached_cpu, 3),
        **paths,
        "cache_build_s": round(build_s, 2),
        "cache_bytes": cache_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="flowers102")
    p.add_argument("--root", default="data")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n", type=int, default=512, help="images measured")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fake", type=int, default=0, help="measure on N generated 500x375 JPEGs instead")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rec = fake_records(tmp, a.fake) if a.fake else None
        out = measure_throughput(a.dataset, a.root, a.size, a.n, num_workers=a.workers, records=rec)
    print(json.dumps({**out, "cache_size": cache_size_table(a.size)}, indent=1))


if __name__ == "__main__":
    main()
