"""``recast-bench demo``: the whole workflow on a laptop in a few minutes, offline.

Pretrains the tiny ViT on a separate synthetic set (cached under ``data/weights``), then runs each demo method over
the synthetic stream from that backbone through the same ``run()`` as real experiments, and prints one row per
method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recast_bench.config import compose_config
from recast_bench.engine.loop import run
from recast_bench.pretrain import pretrain
from recast_bench.registry import all_method_names

DEMO_METHODS = ("linear", "finetune", "recast", "melo", "adaptformer", "recast+adaptformer", "ewc")
DEMO_OVERRIDES = ("trainer=tiny", "trainer.epochs=5", "logger=csv")


def demo(out: str = "runs/demo", backbone: str = "vit_tiny", methods: tuple[str, ...] = DEMO_METHODS,
         data_dir: str = "data") -> list[dict]:  # fmt: skip
    from recast_bench.cli import print_summary, quiet_libraries

    quiet_libraries()
    pretrain(backbone, Path(data_dir) / "weights")
    available = set(all_method_names())
    chosen = [m for m in methods if m in available]
    skipped = [m for m in methods if m not in available]
    if skipped:
        print(f"demo: skipping methods not in this build: {', '.join(skipped)}", file=sys.stderr)
    results = []
    for m in chosen:
        parts = m.split("+")
        cfg = compose_config([
            f"method=[{','.join(parts)}]", f"method_name={m}", f"backbone={backbone}", "stream=synthetic",
            f"paths.data_dir={data_dir}", f"out={out}/{m}", "backbone.allow_random_init=false", *DEMO_OVERRIDES,
        ])  # fmt: skip
        results.append(run(cfg))
    print()
    print_summary(results)
    return results


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain a tiny ViT and run several methods on the synthetic stream (offline)",
        description="The offline demo: pretrain a tiny backbone, run several methods on the synthetic stream and "
        "print a comparison table. Needs no datasets, weights or network.",
    )
    p.add_argument("--out", default="runs/demo", help="where the runs go (default: runs/demo)")
    p.add_argument("--backbone", default="vit_tiny", help="vit_tiny or resnet_tiny (default: vit_tiny)")
    p.add_argument("--methods", nargs="*", default=list(DEMO_METHODS), help="methods to run (default: %(default)s)")
    p.add_argument("--data-dir", default="data", help="data root for the pretrained tiny weights (default: data)")
    p.set_defaults(func=lambda a: demo(a.out, a.backbone, tuple(a.methods), a.data_dir) and 0)
