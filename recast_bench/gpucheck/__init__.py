"""``make gpu-check`` / ``python -m recast_bench.gpucheck``: the project's own GPU smoke test, in 8 minutes on one GPU.

``stack.py`` first says in one line what the Python lacks (before importing torch). Then a preflight (nvidia-smi, the
torch CUDA build and its architectures, a test matmul, ``/dev/shm`` against what the loaders need; a GPU that
nvidia-smi lists but torch cannot use stops the check), the throughput ceiling with FLOPs per image
(``recast_bench/perf/gpu.py``), and every case of ``cases.py`` (representative methods of both paper tables for one
epoch in the default profile, determinism, DDP when two or more GPUs are visible, the timing and concurrency runs of
the cost model, Neural Mimicry) under the time budget of ``schedule.py``: shared processes (``group.py``), per-case
limits, a deadline, skipped cases named. Each case reports pass/fail, its failure class, wall time, tasks done, the
steady images/s of its results.json ``timing`` and peak memory; ``figures.py`` turns the timing runs into the cost
model's inputs. Everything goes to a JSON file that ``recast-bench cost`` and ``make bench`` read.

On a machine without CUDA the same cases run on the tiny backbones over a small synthetic stream, in-process, so CI
keeps the check from rotting (``tests/test_gpu_check.py``).
"""


def main(argv: list[str] | None = None) -> int:
    """Run the check (imported lazily: ``recast_bench.gpucheck.stack`` must run on a Python without torch)."""
    from recast_bench.gpucheck.runner import main as run

    return run(argv)
