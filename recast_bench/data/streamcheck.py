"""``recast-bench data check --stream S``: what a stream's tasks hold, split by split, and their split hashes.

The stream is built as a run builds it (same splits, same val hold-out, same sample limits) but without the image
cache: nothing is decoded except the image headers of user tasks (their sizes; a file PIL cannot identify stops
the check with one line naming it).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recast_bench.data.hashes import dataset_labels, split_hashes
from recast_bench.data.stream import SPLITS, Task


def task_rows(tasks: list[Task]) -> list[dict]:
    """One dict per task: source, val origin, classes, counts per split, the smallest class of train, hashes."""
    hashes = split_hashes(tasks)
    rows = []
    for t in tasks:
        per_class = np.bincount(dataset_labels(t.train), minlength=t.num_classes)
        rows.append({
            "task": t.name,
            "source": t.info.get("source", "generated"),
            "val": t.info.get("val", "generated"),
            "classes": t.num_classes,
            "counts": t.sizes(),
            "min_train_per_class": int(per_class.min()) if len(per_class) else 0,
            "split_hashes": hashes[t.name],
        })  # fmt: skip
    return rows


def format_rows(name: str, rows: list[dict]) -> str:
    head = ["task", "classes", *SPLITS, "min train/class", "val", "source"]
    lines = [f"stream {name}: {len(rows)} tasks", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"], str(r["classes"]), *(str(r["counts"][s]) for s in SPLITS), str(r["min_train_per_class"]),
                 r["val"], r["source"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("split hashes (SHA-256 of the sorted 'file<TAB>label<TAB>split' lines; README 'Your own tasks'):")
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        for s in SPLITS:
            lines.append(f"  {r['task']:<{width}}  {s:<5}  {r['split_hashes'][s]}")
    return "\n".join(lines)


def cmd_check_stream(args: argparse.Namespace) -> int:
    """Build ``args.stream`` without the cache and print its tasks (``--json``: as JSON)."""
    from recast_bench.config import compose_config
    from recast_bench.data.stream import build_stream
    from recast_bench.data.streamfile import stream_overrides

    overrides, stream_file = stream_overrides(args.stream)
    values = {"stream.root": str(args.root)}  # set, not overridden: a path may hold '=' or ','
    if stream_file is not None:
        values["stream.file"] = str(stream_file)
    cfg = compose_config([*overrides, *args.overrides], values=values)
    cfg.stream.cache = False  # counts and hashes need no pixels
    cfg.stream.normalization = "imagenet"  # dataset statistics would decode every image
    tasks = build_stream(cfg.stream, image_size=args.image_size, cache_dir=None)
    rows = task_rows(tasks)
    if args.json:
        print(json.dumps({"stream": cfg.stream.name, "file": cfg.stream.file, "tasks": rows}, indent=2))
    else:
        print(format_rows(cfg.stream.name, rows))
    return 0
