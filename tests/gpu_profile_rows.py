"""Every bench row of one paper table in one process, in the GPU profile on a CPU (tests/test_gpu_profile_rows.py).

``python tests/gpu_profile_rows.py --backbone resnet34|vit_small --out DIR`` runs each row of
``python -m recast_bench.protocol list --backbone B`` with ``recast-bench run``'s own entry point, on the tiny
backbone of that family, and writes ``DIR/rows.json``: per row its exit code, wall and CPU seconds, and what
``torch._dynamo`` compiled (graphs, graph breaks, and the graphs compiled per training step). Rows run in one process
(a subprocess costs ~5 s of start-up on 2 cores); Dynamo is reset between rows, as a fresh process would be.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

TINY = {"resnet34": "resnet_tiny", "vit_small": "vit_tiny"}

PROFILE = [
    "trainer.profile=gpu",  # every GPU-profile value: bf16-mixed, deterministic=warn, TF32 (matmul high),
    "trainer.num_workers=1",  # persistent loader workers, channels_last on ResNets, cuDNN benchmark, compile
    "trainer.compile_backend=aot_eager",  # Dynamo capture + AOTAutograd; inductor itself: test_gpu_profile_rows.py
]
TINY_RUN = [
    "++backbone.allow_random_init=true", "trainer.accelerator=cpu", "trainer.epochs=1", "trainer.batch_size=4",
    "trainer.eval_batch_size=8", "trainer.progress_bar=false", "logger=none", "stream.num_tasks=2",
    "stream.classes_per_task=[3,3]", "stream.train_per_class=4", "stream.val_per_class=2", "stream.test_per_class=2",
]  # fmt: skip
"""Two tasks of 12 training images: 3 full batches of 4 per task (warm-up 1, 2 timed steps), no partial batch."""


def row_args(card, backbone: str, out: Path, data: Path) -> list[str]:  # noqa: ANN001 (a protocol Card)
    """``recast-bench run`` arguments of one bench row, as ``make bench TINY=1`` builds them (mk/bench.mk)."""
    parts = card.method.split("+")
    extra = [f"method.{parts[-1]}.variant={card.id.split('@')[1]}"] if "@" in card.id else []
    if "recast" in parts:
        extra.append("method.recast.mimic_iters=5")  # the paper's procedure, 5 of its 1000/3000 iterations
    if "rosa" in parts:
        extra.append("method.rosa.warmup_steps=2")  # the official 64-step LoRA warm-up, 2 steps of it
    return [
        "run", "--method", card.method, "--backbone", TINY[backbone], "--stream", "synthetic",
        "--out", str(out / card.id), f"paths.data_dir={data}", *TINY_RUN, *PROFILE, *extra,
    ]  # fmt: skip


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", required=True, choices=sorted(TINY))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", default=None, help="row ids (default: every bench row)")
    args = p.parse_args()

    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from recast_bench.cli import main as cli
    from recast_bench.engine.timing import StepTimer
    from recast_bench.protocol.cards import bench_rows

    torch.set_num_threads(1)  # the other table runs beside this one on a 2-core machine
    steps: list[tuple[int, int]] = []  # (training step, graphs compiled so far), across the row's tasks
    real_end = StepTimer.on_train_batch_end

    def on_end(self, trainer, module, outputs, batch, batch_idx):  # noqa: ANN001, ANN202
        steps.append((batch_idx, int(counters["stats"]["unique_graphs"])))
        return real_end(self, trainer, module, outputs, batch, batch_idx)

    StepTimer.on_train_batch_end = on_end
    rows = {}
    for card in bench_rows(args.backbone):
        if args.only and card.id not in args.only:
            continue
        torch._dynamo.reset()
        counters.clear()
        steps.clear()
        start, cpu = time.perf_counter(), _cpu_s()
        try:
            rc = cli(row_args(card, args.backbone, args.out / "runs", args.out / "data"))
            error = None
        except Exception as e:  # noqa: BLE001 (recorded: the test names the row and the error)
            rc, error = None, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            traceback.print_exc()  # into the table's log
        rows[card.id] = {
            "rc": rc,
            "error": error,
            "wall_s": time.perf_counter() - start,
            "cpu_s": _cpu_s() - cpu,
            "graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": dict(counters["graph_break"]),
            "steps": list(steps),
        }
        print(f"{card.id}: rc {rc} {error or ''} {rows[card.id]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "RECAST_BENCH_RUNS_PER_NODE")}
    (args.out / "rows.json").write_text(json.dumps({"rows": rows, "env": env}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
