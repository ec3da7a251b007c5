"""The check's throughput figures, read from its runs' ``results.json`` ``timing`` (schema 2), and the cost model's
inputs derived from them (``cost_inputs`` in gpu-check.json, read by ``recast-bench cost``).

Per run, ``timing`` holds per task the steady images/s (timed steps after warm-up, device-synchronised at both ends;
end to end and device-only) and the fixed seconds per epoch, per validation and per task. The cost model needs the
steady per-epoch cost, but a run records only the mean over its epochs, whose first one also starts the loaders,
compiles and autotunes. So the check times RECAST twice per backbone, in fresh processes alone on the GPU: 1 epoch
(``F1``) and 3 epochs (mean ``F3``); the steady cost is ``(3 F3 - F1) / 2`` and the first epoch's extra ``F1 - Fs``
is charged once per task. Two 3-epoch runs sharing the GPU give the concurrency gain: ``2 x wall alone / mean wall
together``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

TIMING_KEYS = (
    "warmup_steps", "timed_steps", "timed_images", "img_s", "img_s_device", "epoch_fixed_s", "val_s", "task_fixed_s",
    "eval_s",
)  # fmt: skip


@dataclass
class TaskCounts:
    train: int
    val: int
    test: int


def seen_test(counts: list[TaskCounts]) -> list[int]:
    """Test images evaluated after each task (every task seen so far is re-tested)."""
    return [sum(c.test for c in counts[: t + 1]) for t in range(len(counts))]


def case_timing(res: dict[str, Any], counts: list[TaskCounts]) -> dict[str, Any] | None:
    """A run's steady figures combined over its tasks, or ``None`` when its results.json has no timing."""
    per_task = [t if isinstance(t, dict) else None for t in (res.get("timing") or [])]
    if not any(per_task):
        return None
    timed = [t for t in per_task if t and t.get("timed_images") and t.get("img_s")]
    images = sum(t["timed_images"] for t in timed)
    wall = sum(t["timed_images"] / t["img_s"] for t in timed)
    dev = [t for t in timed if t.get("img_s_device")]
    dev_s = sum(t["timed_images"] / t["img_s_device"] for t in dev)
    evals = [(n, t["eval_s"]) for n, t in zip(seen_test(counts), per_task, strict=False) if t and t.get("eval_s")]
    eval_s = sum(s for _, s in evals)
    return {
        "img_s": images / wall if wall else None,
        "img_s_device": sum(t["timed_images"] for t in dev) / dev_s if dev_s else None,
        "eval_img_s": sum(n for n, _ in evals) / eval_s if eval_s else None,
        "timed_images": images,
        "per_task": [{k: t.get(k) for k in TIMING_KEYS} if t else None for t in per_task],
    }


def _main_task(timing: dict[str, Any]) -> int:
    """The task with the most timed images (CIFAR-10 in the GPU form): its per-epoch figures are the least noisy."""
    sizes = [(t or {}).get("timed_images") or 0 for t in timing["per_task"]]
    return max(range(len(sizes)), key=sizes.__getitem__)


def _task_value(row: dict[str, Any] | None, t: int, key: str) -> float | None:
    per_task = row["timing"]["per_task"] if row else []
    return (per_task[t] or {}).get(key) if t < len(per_task) else None


def _steady(one: dict | None, three: dict | None, t: int, key: str) -> tuple[float | None, float]:
    """``(steady per-epoch value, first epoch's extra)`` of ``key`` on task ``t`` from the 1- and 3-epoch runs."""
    v1, v3 = _task_value(one, t, key), _task_value(three, t, key)
    if v1 is not None and v3 is not None:
        steady = max(0.0, (3 * v3 - v1) / 2)
        return steady, max(0.0, v1 - steady)
    return (v3 if v3 is not None else v1), 0.0  # one run only: its mean, first epoch included (an upper bound)


def cost_inputs(rows: list[dict[str, Any]], counts: dict[str, list[TaskCounts]], batch: int) -> dict[str, dict]:
    """``recast-bench cost``'s figures per backbone family from the timing and concurrency cases (see the module
    docstring), plus the peak GPU memory of the family's passing cases (for the bench's runs per GPU). A case's
    warm-up images are its warm-up steps at the batch size its run resolved (``batch_size``: the card's, 128 for
    ViTs), ``batch`` only for a row that does not say."""
    out: dict[str, dict] = {}
    for fam in ("vit", "resnet"):
        mine = [r for r in rows if r.get("bb_family") == fam and r["status"] == "pass"]
        timed = {r["tag"]: r for r in mine if r["group"] in ("timing", "concurrency") and r.get("timing")}
        one, three = timed.get("1ep"), timed.get("3ep")
        base = three or one
        peaks = [r["peak_gpu_mem_mb"] for r in mine if r.get("peak_gpu_mem_mb")]
        entry: dict[str, Any] = {"peak_gpu_mem_mb": max(peaks) if peaks else None}
        if base is None:
            out[fam] = entry
            continue
        tm, n = base["timing"], counts[base["case"]]
        t = _main_task(tm)
        evals = [r["timing"]["eval_img_s"] for r in (one, three) if r and r["timing"].get("eval_img_s")]
        eval_img_s = statistics.mean(evals) if evals else None
        epoch, epoch_extra = _steady(one, three, t, "epoch_fixed_s")
        val, val_extra = _steady(one, three, t, "val_s")
        steps = int((tm["per_task"][t] or {}).get("warmup_steps") or 0)
        warm = min(steps * int(base.get("batch_size") or batch), n[t].train)
        task_rest = [
            p["task_fixed_s"] - (p.get("eval_s") or 0.0)
            for p in tm["per_task"]
            if p and p.get("task_fixed_s") is not None
        ]
        entry |= {
            "backbone": base["backbone"],
            "img_s": tm["img_s"],
            "img_s_device": tm["img_s_device"],
            "eval_img_s": eval_img_s,
            # the warm-up steps' images are charged at the steady rate with the rest: take them out of the fixed cost
            "epoch_fixed_s": max(0.0, epoch - warm / tm["img_s"]) if epoch is not None and tm["img_s"] else None,
            "val_fixed_s": max(0.0, val - n[t].val / eval_img_s) if val is not None and eval_img_s else None,
            "task_fixed_s": statistics.mean(task_rest) + epoch_extra + val_extra if task_rest else None,
            "run_start_s": _run_start(base),
            "first_epoch_extra_s": epoch_extra + val_extra,
            "from": [r["case"] for r in (one, three) if r],
        }
        pair = [timed[k] for k in ("a", "b") if k in timed]
        if three and len(pair) == 2 and all(r.get("run_wall_s") for r in (three, *pair)):
            together = statistics.mean(r["run_wall_s"] for r in pair)
            entry["gain"] = {"2": 2 * three["run_wall_s"] / together}
            entry["from"] += [r["case"] for r in pair]
        out[fam] = entry
    return out


def _run_start(row: dict[str, Any]) -> float | None:
    """A fresh process's seconds outside its run: Python, imports, exit (the case's process time - the run's wall)."""
    if row.get("process_s") is None or row.get("run_wall_s") is None:
        return None
    return max(0.0, row["process_s"] - row["run_wall_s"])
