"""``recast-bench data check|download|prepare``: report which of the six datasets are in place (or what a stream's
tasks hold, with their split hashes), fetch the ones torchvision can download (CIFAR-10/100, Flowers102,
FGVC-Aircraft; MIT67 and CUB-200 need a manual download), and build the preprocessed image cache once before a
sweep, so that parallel runs only read it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recast_bench.data.sources import PAPER_ORDER, SPECS, load_source
from recast_bench.errors import UserError

SPLITS = ("train", "val", "test")


def check_rows(root: str | Path) -> list[dict]:
    """One row per dataset: status, and found vs expected classes and official split sizes (no image decoded)."""
    rows = []
    for name in PAPER_ORDER:
        spec = SPECS[name]
        exp = spec.expected
        row: dict = {"dataset": name, "expected": exp}
        try:
            src = load_source(name, root)
        except UserError as e:
            row["status"] = "missing" if " not found under " in str(e) else "incomplete"
            row["detail"] = str(e)
            rows.append(row)
            continue
        found = {s: len(r) for s, r in src.splits.items()}
        if src.pool is not None:
            found["pool"] = len(src.pool)
        row.update(classes=src.num_classes, counts=found)
        same = src.num_classes == exp.classes and all(found.get(s, 0) == n for s, n in exp.splits.items())
        row["status"] = "ok" if same else "counts differ"
        rows.append(row)
    return rows


def _cell(found: int | None, expected: int | None) -> str:
    if expected is None and found is None:
        return "-"
    return f"{'-' if found is None else found}/{'-' if expected is None else expected}"


def format_table(rows: list[dict]) -> str:
    """A Markdown table: each count is ``found/expected``; the last column is the paper's Table 3."""
    head = ["dataset", "status", "classes", *SPLITS, "all images", "paper Table 3 (classes, samples)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e, c = r["expected"], r.get("counts", {})
        cells = [
            r["dataset"],
            r["status"],
            _cell(r.get("classes"), e.classes),
            *(_cell(c.get(s), e.splits.get(s)) for s in SPLITS),
            _cell(c.get("pool"), e.pool),
            f"{e.paper_classes}, {e.paper_samples}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    if args.stream:  # one stream's tasks, splits and split hashes
        from recast_bench.data.streamcheck import cmd_check_stream

        return cmd_check_stream(args)
    if args.overrides or args.json:
        raise UserError("config overrides and --json need --stream")
    rows = check_rows(args.root)
    print(f"data root: {Path(args.root).resolve()}")
    print(format_table(rows))
    for r in rows:
        if "detail" in r:
            print(f"- {r['detail']}")
    n_ok = sum(r["status"] in ("ok", "counts differ") for r in rows)
    print(f"{n_ok}/{len(rows)} datasets present.")
    return 0  # a report: missing datasets are not an error


def _names(only: str | None) -> list[str]:
    if not only:
        return list(PAPER_ORDER)
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in SPECS]
    if bad:
        raise UserError(f"unknown dataset {bad[0]!r} in --only; valid: {', '.join(PAPER_ORDER)}")
    return names


def cmd_download(args: argparse.Namespace) -> int:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in _names(args.only):
        spec = SPECS[name]
        if spec.download is None:
            print(f"{name}: manual download from {spec.source}; place it as {root}/{spec.layout}")
            continue
        print(f"{name}: downloading to {root} ...", flush=True)
        try:
            spec.download(root)
        except Exception as e:  # network errors come in many types; report and go on with the others
            failed.append(name)
            print(
                f"{name}: download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                file=sys.stderr,
            )
    if failed:
        print(f"failed: {', '.join(failed)} (no network? see data/README.md for manual placement)", file=sys.stderr)
        return 1
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build every cache entry of the stream (image squares, and statistics for dataset normalisation)."""
    from recast_bench.config import compose_config
    from recast_bench.data.images import CachedImages
    from recast_bench.data.stream import SPLITS, build_stream
    from recast_bench.data.streamfile import stream_overrides

    stream, stream_file = stream_overrides(args.stream)  # a stream file's path is never parsed as an override
    overrides = list(stream)
    if args.tasks:
        overrides.append(f"stream.tasks=[{args.tasks}]")
    overrides += list(args.overrides)
    keys = {"data_dir": "paths.data_dir", "cache_dir": "paths.cache_dir", "root": "stream.root"}
    paths = {key: str(getattr(args, opt)) for opt, key in keys.items() if getattr(args, opt)}  # set, never parsed
    if stream_file is not None:
        paths["stream.file"] = str(stream_file)
    cfg = compose_config(overrides, values=paths)
    cache_dir = str(cfg.paths.cache_dir)
    if not cfg.stream.cache:
        raise UserError("stream.cache=false: there is no cache to prepare")
    for size in args.image_size:
        if size < 8:
            raise UserError(f"--image-size must be >= 8, got {size}")
        t0 = time.perf_counter()
        tasks = build_stream(cfg.stream, image_size=size, cache_dir=cache_dir)
        files = {
            p.path for t in tasks for s in SPLITS for p in getattr(_unwrap(getattr(t, s)), "parts", [])
            if isinstance(p, CachedImages)
        }  # fmt: skip
        total = sum(Path(f).stat().st_size for f in files)
        for t in tasks:
            side = t.batch_transform.source if t.batch_transform is not None else size
            sizes = ", ".join(f"{s} {n}" for s, n in t.sizes().items())
            print(f"{t.name}: stored at {side} px for a {size} px model ({sizes})")
        print(f"{size} px: {len(files)} cache files, {total / 2**30:.2f} GiB in {cache_dir}/images "
              f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0


def _unwrap(ds):  # noqa: ANN001, ANN202 (a Subset of a SplitView -> the SplitView)
    return _unwrap(ds.dataset) if hasattr(ds, "dataset") and hasattr(ds, "indices") else ds


def handler(args: argparse.Namespace) -> int:
    """Entry point of ``recast-bench data``."""
    if getattr(args, "data_cmd", None) is None:
        args.data_parser.print_help()
        return 2
    return args.data_func(args)


def add_parser(subparsers) -> None:  # noqa: ANN001 (argparse's private _SubParsersAction)
    """Register ``data`` with its ``check``, ``download`` and ``prepare`` subcommands; sets ``func=handler``."""
    p = subparsers.add_parser("data", help="check, download or prepare the six datasets of the paper's stream")
    sub = p.add_subparsers(dest="data_cmd")
    c = sub.add_parser(
        "check",
        help="report which datasets are present, or a stream's tasks with their counts and split hashes",
        description="Without --stream: which of the six datasets are present, with class and sample counts. With "
        "--stream (a conf/stream/ name or a stream file PATH.yaml): every task of the stream as a run builds it, "
        "with its classes, train/val/test counts and split hashes (see README 'Your own tasks'); only image "
        "headers are read (`data prepare --stream` decodes every image).",
    )
    c.add_argument("--root", default="data", help="data root of the built-in datasets (default: data)")
    c.add_argument("--stream", default=None, help="a conf/stream/ name or a stream file (PATH.yaml)")
    c.add_argument("--image-size", type=int, default=224, help="model input size the stored side is for (224)")
    c.add_argument("--json", action="store_true", help="print JSON (with --stream)")
    c.add_argument("overrides", nargs="*", help="stream overrides (with --stream), e.g. stream.val_fraction=0.2")
    c.set_defaults(data_func=cmd_check)
    d = sub.add_parser("download", help="download CIFAR-10/100, Flowers102, FGVC-Aircraft (needs network)")
    d.add_argument("--root", default="data", help="data root (default: data)")
    d.add_argument("--only", default=None, help="comma-separated dataset names (default: all six)")
    d.set_defaults(data_func=cmd_download)
    r = sub.add_parser(
        "prepare",
        help="build the preprocessed image cache once before a sweep (runs then only read it)",
        description="Decode and resize every split of the stream into the image cache. Safe to run on several "
        "nodes at once: one builds each file, the others wait for it.",
    )
    r.add_argument("--stream", default="six", help="stream config (default: six; e.g. six_pooled) or a stream file")
    r.add_argument(
        "--image-size", type=int, nargs="+", default=[224], help="model input size(s) to prepare for (default: 224)"
    )
    r.add_argument("--data-dir", default=None, help="as paths.data_dir (default: data)")
    r.add_argument("--root", default=None, help="dataset root (default: the data dir)")
    r.add_argument("--cache-dir", default=None, help="as paths.cache_dir (default: DATA_DIR/cache)")
    r.add_argument("--tasks", default=None, help="comma-separated subset of the stream's tasks (default: all)")
    r.add_argument("overrides", nargs="*", help="further config overrides, e.g. stream.normalization=dataset")
    r.set_defaults(data_func=cmd_prepare)
    p.set_defaults(func=handler, data_parser=p)
