"""Preprocessed image cache: each source part decoded and resized ONCE into a uint8 ``[N, side, side, 3]`` ``.npy``.

The paper pickles its preprocessed datasets (section 4) for the same reason: JPEG decoding dominates an epoch of a
frozen-backbone method. Each part is stored at its native side when that is smaller than the resize target (CIFAR
at 32 px) and at the resize target otherwise (256 px squares for a 224 px model); the rest of the pipeline runs per
batch on the device. The array is opened with ``np.load(mmap_mode="r")``, so random access costs a page read, and a
JSON sidecar records what the array holds. The key hashes the dataset, the part, the stored side and crop, the
file list and labels (for CIFAR: the pixel arrays), and a format version; anything else gives a new file.

Arrays and sidecars are written to a temporary name (host, pid, random suffix) and renamed, so a crash never leaves
a half file under the final name (the sidecar is written last and marks completion). Concurrent builders of one
entry, on one node or many, coordinate through a heartbeat lock (:mod:`recast_bench.data.buildlock`): one builds,
the others wait and then read its file.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from recast_bench.data.buildlock import BuildLock, temp_name
from recast_bench.data.images import CachedImages, DecodedImages, native_side
from recast_bench.data.sources import Records
from recast_bench.data.transforms import resize_size
from recast_bench.engine.checkpoint import write_json
from recast_bench.errors import UserError

CACHE_VERSION = 2
"""2: squares at native or resize-target side, finished on the device (1: crops at the model's size)."""


def records_hash(records: Records) -> str:
    """Content key of a part: file names and labels (plus, for user tasks, file sizes and times), or the raw pixels
    for in-memory datasets."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(records.labels, dtype=np.int64).tobytes())
    if records.arrays is not None:
        h.update(str(records.arrays.shape).encode())
        h.update(np.ascontiguousarray(records.arrays).data)
    else:
        h.update("\n".join(records.files or []).encode())
    if records.stamp is not None:  # user tasks: sizes and modification times, so a replaced file rebuilds
        h.update(f"|stamp:{records.stamp}".encode())
    return h.hexdigest()


def geometry_tag(records: Records, side: int, size: int) -> str:
    """What fixes the stored pixels: the side, plus the model size when the square's crop offset depends on it
    (it is cut out of a larger image, or stored at the model's resize target: :func:`to_square`)."""
    return f"{side}" if native_side(records) == side and side != resize_size(size) else f"{side}c{size}"


def cache_paths(
    cache_dir: str | os.PathLike, dataset: str, part: str, side: int, size: int, records: Records
) -> tuple[Path, Path]:
    """The array and sidecar of one part stored at ``side`` for a ``size`` px model."""
    tag = geometry_tag(records, side, size)
    key = hashlib.sha256(f"v{CACHE_VERSION}|{dataset}|{part}|{tag}|{records_hash(records)}".encode()).hexdigest()
    stem = Path(cache_dir) / "images" / f"{dataset}-{part}-{side}px-{key[:16]}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _valid(npy: Path, meta: Path, records: Records, size: int) -> bool:
    if not (npy.is_file() and meta.is_file()):
        return False
    try:
        info = json.loads(meta.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (
        info.get("version") == CACHE_VERSION
        and info.get("labels") == records.labels.tolist()
        and arr.shape == (len(records), size, size, 3)
        and arr.dtype == np.uint8
    )


def build_cache(
    records: Records,
    npy: Path,
    meta: Path,
    side: int,
    size: int,
    info: dict,
    workers: int | None = None,
    chunk: int = 256,
) -> None:
    """Decode + resize every image of ``records`` into ``npy`` (threads: PIL releases the GIL while decoding)."""
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(npy)
    src = DecodedImages(records, side, size)
    workers = workers or min(8, os.cpu_count() or 1)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records), side, side, 3))
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(records), chunk):
                rows = range(start, min(start + chunk, len(records)))
                for i, img in zip(rows, pool.map(_decode_row(src), rows)):
                    out[i] = img.permute(1, 2, 0).numpy()
        out.flush()
        del out
        os.replace(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)
    write_json(
        meta, indent=None, obj={**info, "version": CACHE_VERSION, "n": len(records), "labels": records.labels.tolist()}
    )


def _decode_row(src: DecodedImages):  # noqa: ANN202
    def decode(i: int):  # noqa: ANN202
        try:
            return src.image(i)
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise UserError(f"cannot decode {src.records.path(i)} ({e}); delete or re-download it") from None

    return decode


def cached_images(
    records: Records, dataset: str, part: str, side: int, size: int, cache_dir: str | os.PathLike
) -> CachedImages:
    """Open the cache of one part, building it first when absent or stale (one builder at a time, any node)."""
    npy, meta = cache_paths(cache_dir, dataset, part, side, size, records)

    def build() -> None:
        info = {"dataset": dataset, "part": part, "side": side, "size": size, "records_hash": records_hash(records)}
        build_cache(records, npy, meta, side, size, info)

    if not _valid(npy, meta, records, side):
        BuildLock(npy.with_name(npy.name + ".lock")).run(lambda: _valid(npy, meta, records, side), build)
    return CachedImages(str(npy), records.labels)


def cached_json(path: Path, compute) -> dict:  # noqa: ANN001 (callable returning a JSON-able dict)
    """Read ``path`` or compute, write atomically and return it (small derived values such as channel stats)."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, value, indent=None)  # atomic; two concurrent computations write equal values
    return value
