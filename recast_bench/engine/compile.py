"""``trainer.compile``: ``torch.compile`` of the backbone's forward in the Lightning training step.

What is compiled: ``model.backbone``, in place (``nn.Module.compile``), so the module, its parameter names and its
state dict stay what they were: task states, checkpoints, the feature cache and export are unaffected. The per-task
head stays eager (one small matmul; compiling it would specialise a graph on each task's head). ``linear`` trains
its head on cached features and compiles nothing (results.json then records ``compile: false``).

Only training runs compiled: the compiled forward is kept aside and swapped in only around ``trainer.fit``
(:func:`compiled`), so anything outside training runs eager without having to ask: the methods' data-driven hooks
(RoSA's gradient probe, InfLoRA's input covariance), test evaluation, the task-agnostic scoring after the last task.
Validation, inside fit, runs eager through :func:`eager`. Evaluation passes are
forward passes over a tenth of the training images (validation) or once per task (test), a few per cent of a run's
FLOPs, so compiling them could save at most about as much, while each would cost another graph to compile (grad
mode, batch size and inference tensors are all guarded) and another place for compiled and eager results to differ.

Graphs and recompiles. Dynamo guards a graph on the grad mode, on every module's ``training`` flag (frozen
BatchNorms run in eval mode), on every parameter's ``requires_grad`` (the task's freezing pattern) and on input
shapes. A run compiles one training graph, plus one with a dynamic batch dimension the first time a batch of
another size arrives (a task's last, partial batch). Tasks with the same freezing pattern reuse it;
:data:`RECOMPILE_LIMIT` leaves room for methods whose pattern changes per task. Python floats that change per step
are not baked in (``torch._dynamo.config.specialize_float`` is False): HAT's annealed gate scale ``s`` costs one
recompile (to a graph taking ``s`` as an input), not one per batch, and Piggyback's straight-through
``autograd.Function`` is traced into the graph (tests/test_gpu_profile_rows.py counts the graphs of every bench row).

Graph breaks: none in the training forward of any bench row of either table (counted on the tiny backbones by the
same tests, ``torch._dynamo`` counters; ``TORCH_LOGS=graph_breaks`` shows the same). The one that existed, the
inference cache of RECAST's generated weights (it reads version counters and ``data_ptr()``), is skipped while
compiling: the weight is generated inside the graph (``_Reparam.weight``).

Numerics. Compiled kernels reassociate float sums, so compiled and eager training agree to rounding, amplified by
training like any rounding change (tests/test_gpu_profile_rows.py bounds it). Random numbers differ: inductor draws
dropout masks with its own generator (seeded from torch's, so a compiled run is reproducible, but its masks are not
eager's). Neither changes the experiment, only its execution, as another GPU model would: ``compile`` is recorded in
results.json but not fingerprinted, so a run may resume eagerly where compilation is unavailable (engine/loop.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from recast_bench.errors import UserError

BACKENDS = ("inductor", "aot_eager", "eager")
"""``inductor``: generated, fused kernels (triton on CUDA, C++/OpenMP on the CPU). ``aot_eager``: Dynamo capture and
AOTAutograd's joint forward/backward graph, run with eager kernels (what CI runs every bench row with: it checks
capture, guards and the traced backward at a fraction of inductor's CPU codegen time). ``eager``: capture only."""

RECOMPILE_LIMIT = 32
"""Graphs one backbone forward may collect before Dynamo falls back to eager (torch's default is 8): training and
inference graphs, each static and dynamic-batch, for every distinct freezing pattern a method uses across tasks."""


def check_compile(tcfg: Any, device: torch.device) -> None:
    """A bad backend, or inductor without its compiler, is one line before anything runs (not a traceback mid-task)."""
    if not tcfg.compile:
        return
    backend = str(tcfg.compile_backend)  # one of config.COMPILE_BACKENDS (TrainerConfig checks it)
    if backend != "inductor":
        return
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise UserError(
                "trainer.compile=true with the inductor backend needs triton on CUDA (pip install triton, the "
                "version torch pins), or set trainer.compile=false"
            )
    elif device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception:  # noqa: BLE001 (any failure: no working C++ compiler)
            raise UserError(
                "trainer.compile=true with the inductor backend needs a C++ compiler on the CPU (g++ or clang++; "
                "or set CXX), or set trainer.compile=false"
            ) from None


COMPILED = "_recast_bench_compiled"
"""The attribute holding a backbone's compiled forward between the trainings it runs in."""


def compile_backbone(backbone: nn.Module, backend: str) -> None:
    """Compile ``backbone``'s forward once (idempotent) and keep it aside: it runs only inside :func:`compiled`, so
    everything outside training (the methods' hooks, evaluation, task-agnostic scoring) runs eager by default."""
    if getattr(backbone, COMPILED, None) is not None:
        return
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    backbone.compile(backend=backend)
    setattr(backbone, COMPILED, backbone._compiled_call_impl)
    backbone._compiled_call_impl = None


@contextlib.contextmanager
def compiled(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s compiled forward (if :func:`compile_backbone` made one) inside the block: training."""
    saved = module._compiled_call_impl
    module._compiled_call_impl = getattr(module, COMPILED, None)
    try:
        yield
    finally:
        module._compiled_call_impl = saved


@contextlib.contextmanager
def eager(module: nn.Module) -> Iterator[None]:
    """Run ``module`` uncompiled inside a :func:`compiled` block: validation between training epochs (a few per cent
    of a run's work, where an inference graph would cost more than it saves)."""
    saved = getattr(module, "_compiled_call_impl", None)
    module._compiled_call_impl = None
    try:
        yield
    finally:
        module._compiled_call_impl = saved
