"""Task-pack benchmark: bytes per task and the time to switch task on one shared backbone (CPU figures, JSON).

``python -m recast_bench.deploy.bench --out deploy-bench.json`` builds each method on the backbone (random weights:
sizes and timings do not depend on the values), gives it one task per dataset of the paper's stream (their class
counts) with distinct task states, writes the task pack, then measures, as medians over ``repeats`` switches in a
round-robin over the tasks:

* ``switch_ms``: load a task's state and head from the in-memory pack into the model, and materialise what the
  next forward needs (RECAST regenerates its weights);
* ``switch_from_file_ms``: the same, reading only that task's tensors from the pack file first;
* ``switch_cpu_ms``: ``switch_ms`` in this process's CPU time (robust to other jobs on a shared machine);
* ``switch_and_forward_ms`` vs ``forward_ms``: a switch then one image, and one image alone (batch 1);
* ``agnostic_ms``: choosing the task of ``agnostic_batch`` images when none is given (each of the six tasks'
  states loaded once, its head scoring the whole batch: :mod:`recast_bench.deploy.agnostic`), over
  ``repeats // 20`` repeats; ``agnostic_switch_share`` is the part of it spent switching (6 x ``switch_ms``), and
  ``agnostic_unbatched_ms_per_image`` what one image costs with a switch per task and image (6 x
  ``switch_and_forward_ms``); ``agnostic_cpu_ms_per_image`` is the CPU time per image of the batched choice.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recast_bench.perf.common import timed_ms

SIX_CLASSES = {"flowers102": 102, "aircraft": 100, "mit67": 67, "cifar100": 100, "cifar10": 10, "cub200": 200}


def _median_ms(fn, repeats: int) -> float:  # noqa: ANN001
    return timed_ms(fn, repeats)[0]


def measure_method(name: str, backbone: str, repeats: int, workdir: Path, agnostic_batch: int = 16) -> dict[str, Any]:
    from safetensors import safe_open

    from recast_bench.deploy.pack import pack_tensors, summary
    from recast_bench.engine.checkpoint import load_tensors, save_tensors
    from recast_bench.engine.model import split_head
    from recast_bench.perf.switch import switch_task
    from recast_bench.recast.surgery import reparam_modules

    spec, model, method = _random_model(name, backbone, workdir)
    names = list(SIX_CLASSES)
    states = six_task_states(method, model)
    path = workdir / f"{name.replace('+', '_')}.safetensors"
    total = save_tensors(path, pack_tensors(states, names), {"tasks": ",".join(names)})
    sizes = summary(states, names, total)
    packed = load_tensors(path)
    reparam = list(reparam_modules(model).values())

    def switch(t: int, state: dict[str, torch.Tensor]) -> None:
        model.active_task = t
        switch_task(model, method, *split_head(state, t), reparam)  # RECAST: its weights generated now

    def from_memory(i: int) -> None:
        t = i % len(names)
        switch(t, {k.split("/", 1)[1]: v for k, v in packed.items() if k.startswith(names[t] + "/")})

    def from_file(i: int) -> None:
        t = i % len(names)
        with safe_open(str(path), framework="pt") as f:
            state = {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(names[t] + "/")}  # noqa: SIM118
        switch(t, state)

    x = torch.randn(1, 3, spec.image_size, spec.image_size)

    def forward(i: int) -> None:
        with torch.no_grad():
            model(x)

    def switch_then_forward(i: int) -> None:
        from_memory(i)
        forward(i)

    from_memory(0)
    forward(0)  # warm-up
    steady = _median_ms(forward, max(5, repeats // 5))
    switch_ms, switch_cpu_ms = timed_ms(from_memory, repeats)
    one = _median_ms(switch_then_forward, max(5, repeats // 5))
    agnostic = agnostic_figures(from_memory, model, len(names), agnostic_batch, spec.image_size, max(1, repeats // 20))
    return {
        "pack": sizes,
        "state_bytes_per_task": max(s["state_bytes"] for s in sizes["per_task"].values()),
        "state_numbers_per_task": max(
            sum(v.numel() for k, v in st.items() if not k.startswith("heads.")) for st in states.values()
        ),
        "switch_ms": switch_ms,
        "switch_cpu_ms": switch_cpu_ms,
        "switch_from_file_ms": _median_ms(from_file, repeats),
        "switch_and_forward_ms": one,
        "forward_ms": steady,
        **agnostic,
        "agnostic_switch_share": len(names) * switch_ms / agnostic["agnostic_ms"],
        # choosing one image's task with a switch per task and image: measured parts, six times
        "agnostic_unbatched_ms_per_image": len(names) * one,
    }


def _random_model(name: str, backbone: str, workdir: Path) -> tuple[Any, Any, Any]:
    """``(spec, model, method)``: ``name`` set up on a randomly initialised ``backbone``, in eval mode."""
    from recast_bench.perf.models import method_model, seeded_backbone
    from recast_bench.registry import load_all

    load_all()
    module, spec, _ = seeded_backbone(backbone, 0, "/nonexistent")
    # Random weights: a short Neural Mimicry is enough, sizes and switch times do not depend on its quality.
    model, method = method_model(name, module, spec, str(workdir / "cache"), 0, {"recast": {"mimic_iters": 20}})
    return spec, model.eval(), method


def six_task_states(method: Any, model: Any) -> dict[int, dict[str, torch.Tensor]]:  # noqa: ANN401
    """One head per dataset of the paper's stream and a distinct task state each (random offsets)."""
    from recast_bench.engine.model import head_key

    states: dict[int, dict[str, torch.Tensor]] = {}
    g = torch.Generator().manual_seed(1)
    for t, classes in enumerate(SIX_CLASSES.values()):
        with torch.no_grad():
            for p in method.task_parameters(model).values():  # a distinct state per task
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.add_head(t, classes)
        state = method.task_state(model)
        state.update(
            {f"heads.{head_key(t)}.{k}": v.detach().clone() for k, v in model.heads[head_key(t)].state_dict().items()}
        )
        states[t] = state
    return states


def agnostic_figures(
    switch_to: Callable[[int], None],
    model: Any,
    n_tasks: int,
    batch: int,
    image_size: int,
    repeats: int,  # noqa: ANN401
) -> dict[str, float]:
    """Time :mod:`recast_bench.deploy.agnostic`'s batched choice: for ``batch`` images, each task's state is loaded
    once and its head scores the whole batch (``max_softmax``); ``agnostic_ms`` is the median over ``repeats``."""
    from recast_bench.deploy.agnostic import Choice

    x = torch.randn(batch, 3, image_size, image_size)

    def choose(_: int) -> None:
        choice = Choice(batch, x.device)
        for t in range(n_tasks):
            switch_to(t)
            with torch.no_grad():
                choice.update(t, slice(0, batch), model(x, t), "max_softmax")

    choose(0)  # warm-up
    ms, cpu = timed_ms(choose, repeats)
    return {"agnostic_batch": batch, "agnostic_ms": ms, "agnostic_ms_per_image": ms / batch,
            "agnostic_cpu_ms_per_image": cpu / batch}  # fmt: skip


def run_bench(
    backbone: str, methods: list[str], repeats: int, threads: int | None, agnostic_batch: int = 16
) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "backbone": backbone,
        "device": "cpu",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "repeats": repeats,
        "tasks": SIX_CLASSES,
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods:
            out["methods"][name] = measure_method(name, backbone, repeats, Path(tmp), agnostic_batch)
    return out


def main(argv: list[str] | None = None) -> None:
    import json

    p = argparse.ArgumentParser(description="Task-pack size and task-switch time on one shared backbone (CPU).")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--backbone", default="vit_small", help="backbone (default: vit_small, random weights)")
    p.add_argument("--methods", nargs="+", default=["recast", "melo", "lora"], help="methods to measure")
    p.add_argument("--repeats", type=int, default=60, help="switches per figure (median)")
    # One thread by default: on a shared 2-core machine a 2-thread pool stalls at every op, swamping the figures.
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--agnostic-batch", type=int, default=16, help="images per task-agnostic choice (default: 16)")
    args = p.parse_args(argv)
    res = run_bench(args.backbone, args.methods, args.repeats, args.threads, args.agnostic_batch)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for name, r in res["methods"].items():
        print(f"{name:<10} state {r['state_bytes_per_task']:>8,} B/task ({r['state_numbers_per_task']} numbers), "
              f"pack {r['pack']['file_bytes_per_task']:>10,.0f} B/task incl. head; switch {r['switch_ms']:.2f} ms, "
              f"from file {r['switch_from_file_ms']:.2f} ms; forward {r['forward_ms']:.1f} ms, "
              f"switch + forward {r['switch_and_forward_ms']:.1f} ms; task-agnostic {r['agnostic_ms_per_image']:.1f} "
              f"ms/image (CPU {r['agnostic_cpu_ms_per_image']:.1f}) in batches of {r['agnostic_batch']} "
              f"({r['agnostic_switch_share']:.1%} switching) vs {r['agnostic_unbatched_ms_per_image']:.1f} ms/image "
              "switching per image")  # fmt: skip


if __name__ == "__main__":
    main()
