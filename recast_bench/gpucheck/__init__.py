"""``make gpu-check`` / ``python -m recast_bench.gpucheck``: the project's own GPU smoke test.

It runs a preflight (nvidia-smi, the torch CUDA build and its architectures, a test matmul, /dev/shm), then every
case of the check (``cases.py``: representative methods of both paper tables for one epoch in the default
profile, determinism, the evaluation device, DDP when two or more GPUs are visible, Neural Mimicry) and the GPU
throughput ceiling (``recast_bench/perf/gpu.py``). Each case prints pass/fail, its failure class, wall time, tasks
done, images/s and peak memory; everything goes to a JSON file that ``recast-bench cost`` reads.

On a machine without CUDA the same cases run on the tiny backbones over a small synthetic stream, in-process and
in about a minute, so CI keeps the check from rotting (``tests/test_gpu_check.py``).
"""

from recast_bench.gpucheck.runner import main

__all__ = ["main"]
