"""Input-pipeline throughput, uncached (decode + resize every access) vs the uint8 memory-mapped cache.

``measure_throughput`` times full passes of a DataLoader yielding training batches (flip + normalise included)
over one split of a dataset, first decoding each JPEG, then from the cache, and reports images/s. The perf command
can call it; ``python -m recast_bench.data.bench --fake 512`` measures on generated 500x375 JPEGs (the size of a
typical Flowers/CUB photo) when no dataset is at hand.
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
from recast_bench.data.images import DecodedImages, SplitView
from recast_bench.data.sources import Records, load_source
from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, sample_transform


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
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, persistent_workers=num_workers > 0
    )
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
    """Images/s of training batches, uncached vs cached, on ``max_images`` images of ``dataset``'s ``part``.

    Args:
        records: measure these instead of reading ``dataset`` under ``root`` (e.g. :func:`fake_records`).
        cache_dir: where the cache goes; a temporary directory (removed afterwards) when ``None``.
        epochs: passes per measurement; the cached passes after the first are served from the page cache,
            as they are in training.

    Returns:
        ``uncached_img_s``, ``cached_img_s`` (wall clock, ``num_workers`` loader workers), ``speedup``,
        ``*_cpu_ms_per_img`` (CPU time per image in one process: robust to other load on the machine; on ``k``
        free cores, throughput is at most ``1000 * k / cpu_ms``), ``cache_build_s`` (the one-off decode), sizes.
    """
    rec = _head(records if records is not None else load_source(dataset, root).splits[part], max_images)
    tf = sample_transform(True, IMAGENET_MEAN, IMAGENET_STD)
    idx = np.stack([np.zeros(len(rec), np.int64), np.arange(len(rec))], axis=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers do the work; one thread each avoids oversubscribing the cores
    try:
        plain = SplitView([DecodedImages(rec, image_size)], idx, tf)
        uncached = _images_per_s(plain, batch_size, num_workers, epochs)
        uncached_cpu = _cpu_ms_per_image(plain, batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            cdir = cache_dir or tmp
            npy, _ = cache_paths(cdir, dataset, part, image_size, rec)
            t0 = time.perf_counter()
            cached_ds = cached_images(rec, dataset, part, image_size, cdir)
            build_s = time.perf_counter() - t0
            cached = _images_per_s(SplitView([cached_ds], idx, tf), batch_size, num_workers, epochs)
            cached_cpu = _cpu_ms_per_image(SplitView([cached_ds], idx, tf), batch_size)
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
        "cached_img_s": round(cached, 1),
        "speedup": round(cached / uncached, 1),
        "uncached_cpu_ms_per_img": round(uncached_cpu, 3),
        "cached_cpu_ms_per_img": round(cached_cpu, 3),
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
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
