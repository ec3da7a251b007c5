"""``recast-bench perf``: measured speed and size of RECAST against its peers (issue 8).

Figures: Neural Mimicry time, memory and weight cosine (SVD and the paper's random start), training-step time
ratios against fine-tuning, MeLo and PEFT LoRA, inference with cached generated weights against the plain timm
model, task-switch latency, per-task size of every registered method, and input-pipeline throughput. Each lives
in its own module; :func:`recast_bench.perf.runner.run_perf` runs them all.

This package is the one home of measuring: timers, steady images/s and peak memory (``common``), ``nvidia-smi``
(``smi``), the throughput ceiling and bf16 fractions (``gpu``), the task switch (``switch``), per-task sizes
(``sizes``), the input pipeline (``loading``), counted FLOPs (``flops``, ``work``) and the sourced MFU (``mfu``).
``gpu-check``, ``cost``, the slot launcher, ``python -m recast_bench.deploy.bench``, ``python -m
recast_bench.data.bench`` and ``python -m recast_bench.recast.study`` use them; the training step they time is the
engine's own (:class:`recast_bench.engine.step.TrainStep`).
"""

from __future__ import annotations

from recast_bench.perf.cli import add_parser, handler

__all__ = ["add_parser", "handler"]
