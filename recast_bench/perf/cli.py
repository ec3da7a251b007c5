"""``recast-bench perf --out DIR [--quick]``: measure speed and size, write ``DIR/perf.json`` and ``DIR/perf.md``."""

from __future__ import annotations

import argparse

from recast_bench.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("perf", help="speed and size of RECAST against its peers (perf.json, perf.md)")
    p.add_argument("--out", required=True, help="output directory for perf.json and perf.md")
    p.add_argument("--quick", action="store_true", help="tiny backbones and few repeats (seconds; smoke test)")
    p.add_argument("--weights-dir", default=None, help="local pretrained weights (default data/weights)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads while measuring (default: one per core)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recast_bench.perf.config import PerfConfig
    from recast_bench.perf.runner import run_perf

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    cfg = PerfConfig.quick() if args.quick else PerfConfig()
    if args.weights_dir is not None:
        cfg.weights_dir = args.weights_dir
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        cfg.threads = args.threads
    if args.seed is not None:
        cfg.seed = args.seed
    res = run_perf(cfg, out)
    print((out / "perf.md").read_text())
    failed = [t["figure"] for t in res["targets"] if t["pass"] is False]
    print(f"wrote {out / 'perf.json'} and {out / 'perf.md'}; targets missed: {', '.join(failed) or 'none'}")
    return 0
