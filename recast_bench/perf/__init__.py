"""``recast-bench perf``: measured speed and size of RECAST against its peers (issue 8).

Figures: Neural Mimicry time, memory and weight cosine (SVD and the paper's random start), training-step time
ratios against fine-tuning, MeLo and PEFT LoRA, inference with cached generated weights against the plain timm
model, task-switch latency, per-task size of every registered method, and input-pipeline throughput. Each lives
in its own module; :func:`recast_bench.perf.runner.run_perf` runs them all.
"""

from __future__ import annotations

from recast_bench.perf.cli import add_parser, handler

__all__ = ["add_parser", "handler"]
