"""A stream from a file: ``recast-bench run --stream PATH.yaml`` puts your own tasks (and built-in datasets) in order.

.. code-block:: yaml

    name: fashion                     # the stream's name (run directories, reports)
    tasks:
      - name: tops
        root: fm/tops                 # ImageFolder: train/<class>/*, test/<class>/*, optional val/<class>/*
      - name: rest
        csv: fm/rest/manifest.csv     # columns path,label,split; paths relative to the CSV
      - name: cifar10                 # a built-in dataset by name, read under stream.root (default data/)
      - dataset: cub200               # the same, with an optional other name and data_root: DIR
        name: birds

Relative paths resolve against the YAML file's folder. Task names are letters, digits, ``_ . -`` (they name
directories and cache files); ``auto`` is reserved for task-agnostic prediction. The file's path is kept in
``stream.file`` and never goes through Hydra's override parser, so it may hold ``=``, ``,`` or spaces.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from recast_bench.data.sources import SPECS, SourceData, load_source
from recast_bench.data.stream import Task
from recast_bench.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_NAMES = ("auto",)
TASK_KEYS = ("name", "root", "csv", "dataset", "data_root")
STREAM_KEYS = ("name", "tasks")


def is_stream_path(value: str) -> bool:
    """Whether a ``--stream`` value is a file path (``*.yaml``/``*.yml`` or a path) rather than a conf/ name."""
    return value.lower().endswith((".yaml", ".yml")) or "/" in value or os.sep in value


@dataclass(frozen=True)
class TaskSpec:
    """One task of a stream file: an ImageFolder ``root``, a ``csv`` manifest, or a built-in ``dataset``."""

    name: str
    root: Path | None = None
    csv: Path | None = None
    dataset: str | None = None
    data_root: Path | None = None

    @property
    def is_user(self) -> bool:
        return self.dataset is None

    def describe(self, data_root: str) -> str:
        if self.root is not None:
            return f"ImageFolder {self.root}"
        if self.csv is not None:
            return f"CSV {self.csv}"
        return f"built-in {self.dataset} under {self.data_root or data_root}"

    def load(self, data_root: str) -> SourceData:
        """The task's splits (no image decoded)."""
        from recast_bench.data.user import load_csv, load_image_folder

        if self.root is not None:
            return load_image_folder(self.name, self.root)
        if self.csv is not None:
            return load_csv(self.name, self.csv)
        return load_source(self.dataset, self.data_root or data_root)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StreamSpec:
    name: str
    path: Path
    tasks: list[TaskSpec]


def _check_name(what: str, value: object, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise UserError(f"{where}: {what} {value!r} must be letters, digits, '_', '.' or '-' (not starting with "
                        "'.', '_' or '-')")  # fmt: skip
    return value


def _task_spec(entry: object, i: int, path: Path) -> TaskSpec:
    where = f"stream file {path}, task {i + 1}"
    if isinstance(entry, str):  # `- cifar10`: a built-in dataset by name
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping with name and root, csv or dataset, got {entry!r}")
    unknown = [k for k in entry if k not in TASK_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(TASK_KEYS)})")
    kinds = [k for k in ("root", "csv", "dataset") if entry.get(k) is not None]
    if len(kinds) > 1:
        raise UserError(f"{where}: give one of root, csv or dataset, not {' and '.join(kinds)}")
    name = entry.get("name", entry.get("dataset"))
    name = _check_name("task name", name, where)
    where = f"stream file {path}, task {name!r}"
    if name in RESERVED_NAMES:
        raise UserError(f"{where}: the name {name!r} is reserved (predict --task auto); rename the task")
    if not kinds:
        if name not in SPECS:
            raise UserError(f"{where}: needs root: (an ImageFolder), csv: (a manifest) or a built-in dataset name "
                            f"({', '.join(SPECS)})")  # fmt: skip
        kinds, entry = ["dataset"], {**entry, "dataset": name}
    if entry.get("data_root") is not None and kinds != ["dataset"]:
        raise UserError(f"{where}: data_root applies to built-in datasets only")
    if kinds == ["dataset"] and entry["dataset"] not in SPECS:
        raise UserError(f"{where}: unknown built-in dataset {entry['dataset']!r} (valid: {', '.join(SPECS)})")

    def resolve(key: str) -> Path | None:
        value = entry.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: {key} must be a path, got {value!r}")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (path.parent / p).resolve()

    return TaskSpec(name, resolve("root"), resolve("csv"), entry.get("dataset"), resolve("data_root"))


def read_stream_file(path: str | os.PathLike) -> StreamSpec:
    """Parse and check a stream file (names, keys, duplicates); the tasks' data is read when the stream is built."""
    import yaml

    path = Path(os.path.expanduser(str(path))).resolve()
    if not path.is_file():
        raise UserError(f"stream file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"stream file {path} is not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise UserError(f"stream file {path}: expected a mapping with name and tasks")
    unknown = [k for k in doc if k not in STREAM_KEYS]
    if unknown:
        raise UserError(f"stream file {path}: unknown key {unknown[0]!r} (valid: {', '.join(STREAM_KEYS)}; stream "
                        "settings such as val_fraction are overrides: stream.val_fraction=0.2)")  # fmt: skip
    name = _check_name("stream name", doc.get("name", path.stem), f"stream file {path}")
    entries = doc.get("tasks")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"stream file {path}: tasks must be a non-empty list")
    tasks = [_task_spec(e, i, path) for i, e in enumerate(entries)]
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"stream file {path}: task name {twice[0]!r} appears twice")
    return StreamSpec(name, path, tasks)


def _scan_sides(src: SourceData, cache_dir: str | None) -> None:
    """Fill each user split's ``side_hint`` from the image headers (cached by file list, sizes and times)."""
    from recast_bench.data.cache import cached_json, records_hash
    from recast_bench.data.user import scan_sides

    for part, rec in src.splits.items():
        if cache_dir is None:
            rec.side_hint = scan_sides(rec)
            continue
        path = Path(cache_dir) / "sides" / f"{src.name}-{part}-{records_hash(rec)[:16]}.json"
        found = cached_json(path, lambda rec=rec: {"side": scan_sides(rec)})
        rec.side_hint = int(found["side"])


def file_stream(cfg, image_size: int, cache_dir: str | None = None) -> list[Task]:  # noqa: ANN001 (stream cfg)
    """The tasks of stream file ``cfg.file`` (only those in ``cfg.tasks`` when given), in the file's order."""
    from recast_bench.data.six import source_task

    spec = read_stream_file(cfg.file)
    names = [t.name for t in spec.tasks]
    wanted = list(cfg.tasks) if cfg.tasks else names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r} in stream.tasks; {spec.path} has: {', '.join(names)}")
    use_cache = bool(cfg.cache) and cache_dir is not None
    tasks = []
    for ts in spec.tasks:
        if ts.name not in wanted:
            continue
        src = ts.load(str(cfg.root))
        if ts.is_user:
            _scan_sides(src, cache_dir if use_cache else None)
        tasks.append(source_task(src, cfg, image_size, cache_dir, name=ts.name, source=ts.describe(str(cfg.root))))
    return tasks


def stream_overrides(value: str) -> tuple[list[str], Path | None]:
    """A ``--stream`` value as Hydra overrides, plus the stream file when it is one.

    A conf/ name becomes ``stream=NAME``. A file is read and checked here; only its (checked) name becomes an
    override (``stream.name``), and its path is returned to be set on the composed config
    (``compose_config(values=...)``), never parsed by Hydra.
    """
    if not is_stream_path(value):
        return [f"stream={value}"], None
    spec = read_stream_file(value)
    return [f"stream.name={spec.name}"], spec.path


