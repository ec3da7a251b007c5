"""A user's own task on disk, in one of two layouts, read as the six datasets are (:class:`SourceData`, no decode):

* **ImageFolder** (``root:``): ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*`` under the
  task root; classes are the folder names of ``train/``, sorted (as torchvision's ``ImageFolder``), images are the
  files with an image extension, found recursively inside each class folder.
* **CSV** (``csv:``): a manifest with the columns ``path,label,split`` (``split``: ``train``, ``val`` or ``test``;
  other columns are ignored); paths are relative to the CSV's folder; classes are the train labels, sorted as
  integers when every label is one, else as strings.

Every file list is sorted, so a split does not depend on the order of a directory listing or of the CSV's rows.
Whatever is wrong with a task (a missing folder or file, a CSV without the columns, an unknown split, a label absent
from train, an empty split, a file listed twice) raises one :class:`UserError` line naming the task and the file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from recast_bench.data.sources import Records, SourceData
from recast_bench.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS`` (case-insensitive): the files an ImageFolder task reads."""
CSV_COLUMNS = ("path", "label", "split")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _stamp(sizes_times: list[tuple[int, int]]) -> str:
    return hashlib.sha256(np.asarray(sizes_times, dtype=np.int64).tobytes()).hexdigest()


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _class_files(split_dir: Path, task: str) -> dict[str, list[str]]:
    """``{class folder: sorted image paths relative to the task root}`` of one split folder."""
    root = split_dir.parent
    out: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _hidden(entry.name):
            continue
        if not entry.is_dir():
            if _is_image(entry.name):
                raise UserError(f"task {task!r}: image {split_dir / entry.name} is not inside a class folder "
                                f"(expected {split_dir.name}/<class>/<image>)")  # fmt: skip
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            files += [os.path.join(dirpath, f) for f in filenames if _is_image(f) and not _hidden(f)]
        out[entry.name] = sorted(Path(f).relative_to(root).as_posix() for f in files)
    return out


def load_image_folder(name: str, root: str | os.PathLike) -> SourceData:
    """An ImageFolder task: ``root/{train,test}/<class>/*`` and optionally ``root/val/<class>/*``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"task {name!r}: folder {root} not found")
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name))
    unknown = [d for d in present if d not in SPLIT_NAMES]
    if unknown:
        raise UserError(f"task {name!r}: unknown split folder {root / unknown[0]} (expected train, val, test)")
    for split in ("train", "test"):
        if split not in present:
            raise UserError(f"task {name!r}: folder {root / split} not found (expected {split}/<class>/<image>)")
    per_split = {s: _class_files(root / s, name) for s in SPLIT_NAMES if s in present}
    classes = sorted(per_split["train"])
    if not classes:
        raise UserError(f"task {name!r}: {root / 'train'} holds no class folders (expected train/<class>/<image>)")
    for c in classes:
        if not per_split["train"][c]:
            raise UserError(f"task {name!r}: class folder {root / 'train' / c} holds no images")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, by_class in per_split.items():
        absent = [c for c, files in by_class.items() if c not in index and files]
        if absent:
            raise UserError(f"task {name!r}: class {absent[0]!r} of {root / split} is absent from train")
        files = sorted(f for files in by_class.values() for f in files)
        if not files:
            raise UserError(f"task {name!r}: the {split} split is empty ({root / split} holds no images)")
        labels = np.asarray([index[f.split("/", 2)[1]] for f in files], np.int64)
        stamps = [_stat(str(root / f)) for f in files]
        splits[split] = Records(labels, files, str(root), stamp=_stamp(stamps))  # type: ignore[arg-type]
    return SourceData(name, len(classes), splits, class_names=classes)


def _sort_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _read_manifest(name: str, path: Path) -> list[tuple[int, str, str, str]]:
    """``(line, path, label, split)`` rows of a manifest, validated cell by cell."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                found = ", ".join(header) if header else "none"
                raise UserError(f"task {name!r}: {path} lacks the column {missing[0]!r} (needs path, label, split; "
                                f"found {found})")  # fmt: skip
            reader.fieldnames = header
            rows = []
            for row in reader:
                line = reader.line_num
                cells = [(row.get(c) or "").strip() for c in CSV_COLUMNS]
                if not all(cells):
                    empty = CSV_COLUMNS[[bool(c) for c in cells].index(False)]
                    raise UserError(f"task {name!r}: {path} line {line} has an empty {empty!r}")
                if any(ch in cell for cell in cells[:2] for ch in "\t\n"):
                    raise UserError(f"task {name!r}: {path} line {line} has a tab or newline in a path or label")
                if cells[2] not in SPLIT_NAMES:
                    raise UserError(f"task {name!r}: {path} line {line} has the unknown split {cells[2]!r} "
                                    "(expected train, val or test)")  # fmt: skip
                rows.append((line, *cells))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"task {name!r}: cannot read {path} ({type(e).__name__}: {e})") from None
    return rows


def load_csv(name: str, path: str | os.PathLike) -> SourceData:
    """A CSV task: columns ``path,label,split``, paths relative to the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task {name!r}: file {path} not found")
    rows = _read_manifest(name, path)
    seen: dict[str, int] = {}
    for line, file, _, _ in rows:
        if file in seen:
            raise UserError(f"task {name!r}: {path} lists {file} twice (lines {seen[file]} and {line})")
        seen[file] = line
    classes = _sort_labels({label for _, _, label, split in rows if split == "train"})
    index = {c: i for i, c in enumerate(classes)}
    base = path.parent
    splits = {}
    for split in SPLIT_NAMES:
        part = sorted((file, label, line) for line, file, label, s in rows if s == split)
        if not part:
            if split == "val":  # held out of train, as for the built-in datasets
                continue
            raise UserError(f"task {name!r}: the {split} split is empty ({path} has no {split!r} rows)")
        absent = [(label, line) for _, label, line in part if label not in index]
        if absent:
            raise UserError(f"task {name!r}: label {absent[0][0]!r} ({path} line {absent[0][1]}, {split}) is absent "
                            "from train")  # fmt: skip
        files = [f for f, _, _ in part]
        stamps = [_stat(str(base / f)) for f in files]
        gone = [f for f, s in zip(files, stamps) if s is None]
        if gone:
            raise UserError(f"task {name!r}: {len(gone)} of {len(files)} {split} images listed in {path} are missing, "
                            f"first {base / gone[0]}")  # fmt: skip
        labels = np.asarray([index[label] for _, label, _ in part], np.int64)
        splits[split] = Records(labels, files, str(base), stamp=_stamp(stamps))  # type: ignore[arg-type]
    return SourceData(name, len(classes), splits, class_names=classes)


def _shorter_side(path: str) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return min(im.size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {path} ({type(e).__name__}); delete or replace it") from None


def scan_sides(records: Records, workers: int | None = None) -> int:
    """The largest shorter side among ``records``' images, from their headers (no pixel is decoded).

    Threads overlap the file reads; a file PIL cannot identify raises one line naming it.
    """
    paths = [records.path(i) for i in range(len(records))]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return max(pool.map(_shorter_side, paths, chunksize=256), default=0)
