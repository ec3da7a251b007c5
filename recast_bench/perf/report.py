"""The targets of issue 8 checked against a ``perf.json`` dict, and its Markdown summary (``perf.md``)."""

from __future__ import annotations

from typing import Any

from recast_bench.perf.common import is_unavailable, unavailable


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return d if is_unavailable(d) else unavailable(f"no figure {'.'.join(keys)}")
        d = d[k]
    return d


def _target(figure: str, value: Any, target: str, ok: Any) -> dict[str, Any]:
    if is_unavailable(value):
        return {"figure": figure, "value": value, "target": target, "pass": value}
    return {"figure": figure, "value": value, "target": target, "pass": bool(ok(value))}


def check_targets(res: dict[str, Any], vit: str, resnet: str) -> list[dict[str, Any]]:
    """One row per target: the figure, its value, the target in words and pass (or the unavailable reason)."""
    m_vit = _get(res, "mimicry", vit, "svd")
    m_res = _get(res, "mimicry", resnet, "svd")
    return [
        _target(f"mimicry {vit} SVD: min weight cosine", _get(m_vit, "min_cosine"), ">= 0.9999", lambda v: v >= 0.9999),
        _target(f"mimicry {vit} SVD: seconds", _get(m_vit, "seconds"), "<= 10 s", lambda v: v <= 10),
        _target(
            f"mimicry {resnet} SVD: min weight cosine",
            _get(m_res, "min_cosine"),
            ">= 0.99 (paper)",
            lambda v: v >= 0.99,
        ),
        _target(
            "train step recast/finetune",
            _get(res, "train_step", "ratio", "recast/finetune"),
            "<= 1.05",
            lambda v: v <= 1.05,
        ),
        _target(
            "inference cached recast/plain",
            _get(res, "inference", "ratio_cached"),
            "1.00 +- 0.03",
            lambda v: abs(v - 1.0) <= 0.03,
        ),
        _target("task switch median ms", _get(res, "task_switch", "median_total_ms"), "<= 50 ms", lambda v: v <= 50),
        _target(
            f"recast task file bytes ({vit}, no head)",
            _get(res, "sizes", vit, "recast", "bytes"),
            "<= 1024",
            lambda v: v <= 1024,
        ),
    ]


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]


def _targets_md(res: dict[str, Any]) -> list[str]:
    """The header line (machine, wall time) and the targets with pass/fail."""
    mi = res["machine"]
    lines = [
        "# recast-bench perf",
        "",
        f"{mi['date_utc']}, {mi['cpu_model']}, {mi['cpu_affinity']} cores, torch {mi['torch_version']} "
        f"({mi['torch_threads']} threads), load average {mi['load_avg_1m_at_start']} at start, "
        f"wall {res['wall_s']:.0f} s.",
        "",
        "## Targets",
        "",
    ]
    rows = [
        [
            t["figure"],
            t["value"],
            t["target"],
            "PASS" if t["pass"] is True else ("FAIL" if t["pass"] is False else t["pass"]),
        ]
        for t in res["targets"]
    ]
    lines += _table(["figure", "value", "target", "result"], rows)
    return lines


def _mimicry_md(res: dict[str, Any]) -> list[str]:
    """Neural Mimicry per backbone and init."""
    lines: list[str] = []
    lines += ["", "## Neural Mimicry (CPU, no cache)", ""]
    rows = []
    for b, d in res["mimicry"].items():
        for init, r in d.items():
            if isinstance(r, dict):
                cap = f" (cap {r['iters_cap']} of {r['iters_paper']})" if "iters_cap" in r else ""
                iters = f"{r['iters_run']}{cap}"
                rows.append(
                    [
                        b,
                        init,
                        r["seconds"],
                        r["peak_rss_mb"],
                        r["min_cosine"],
                        r["mean_cosine"],
                        iters,
                        r.get("projected_paper_s", "-"),
                    ]
                )
            else:
                rows.append([b, init, r, "", "", "", "", ""])
    lines += _table(["backbone", "init", "s", "peak MB", "min cos", "mean cos", "iters", "projected paper s"], rows)
    return lines


def _train_step_md(res: dict[str, Any]) -> list[str]:
    """Training-step time of recast and its peers."""
    lines: list[str] = []
    ts = res["train_step"]
    if isinstance(ts, dict):
        lines += [
            "",
            f"## Training step ({ts['backbone']}, batch {ts['batch']} at {ts['image_size']}, median of "
            f"{ts['repeats']}, interleaved)",
            "",
        ]
        rows = [
            [n, v, ts["images_per_s"].get(n, ""), ts["task_params"].get(n, ""), ts["ratio"].get(f"recast/{n}", "")]
            for n, v in ts["median_s"].items()
        ]
        lines += _table(["method", "s/step", "img/s", "task params", "recast / this"], rows)
    return lines


def _inference_md(res: dict[str, Any]) -> list[str]:
    """Forward time of the plain model and RECAST with and without its weight cache."""
    lines: list[str] = []
    inf = res["inference"]
    if isinstance(inf, dict):
        lines += ["", f"## Inference (batch {inf['batch']}, median of {inf['repeats']}, interleaved)", ""]
        lines += _table(
            ["model", "s/forward", "ratio to plain"],
            [
                ["plain timm", inf["median_s"]["plain"], 1.0],
                ["recast, cached weights", inf["median_s"]["recast_cached"], inf["ratio_cached"]],
                ["recast, no cache", inf["median_s"]["recast_uncached"], inf["ratio_uncached"]],
            ],
        )
        lines += [
            "",
            f"Minimum-based ratio {inf['ratio_cached_min']:.3f}; cache-hit overhead "
            f"{inf['cache_hit_overhead_ms_per_forward']:.3f} ms per forward, i.e. ratio "
            f"{inf['ratio_cached_from_overhead']:.4f} from the overhead alone.",
        ]
    return lines


def _switch_md(res: dict[str, Any]) -> list[str]:
    """Task-switch time by parts."""
    lines: list[str] = []
    sw = res["task_switch"]
    if isinstance(sw, dict):
        lines += ["", f"## Task switch (median of {sw['repeats']})", ""]
        lines += _table(
            ["read files ms", "assign ms", "regenerate ms", "total ms", "outputs match"],
            [
                [
                    sw["median_load_ms"],
                    sw["median_assign_ms"],
                    sw["median_regenerate_ms"],
                    sw["median_total_ms"],
                    sw["outputs_match"],
                ]
            ],
        )
    return lines


def _sizes_md(res: dict[str, Any]) -> list[str]:
    """Per-task size of every method."""
    lines: list[str] = []
    lines += ["", "## Per-task size (head excluded; bytes = safetensors of task_state)", ""]
    rows = []
    for b, d in res["sizes"].items() if isinstance(res["sizes"], dict) else []:
        for n, r in d.items():
            rows.append(
                [
                    b,
                    n,
                    *(
                        [r["task_params"], r["bytes"], r["packed_bytes"], r["head_bytes"], r["shared_bytes"]]
                        if isinstance(r, dict)
                        else [r, "", "", "", ""]
                    ),
                ]
            )
    lines += _table(["backbone", "method", "task params", "bytes", "packed bytes", "head bytes", "shared bytes"], rows)
    return lines


def _loading_md(res: dict[str, Any]) -> list[str]:
    """Input-pipeline throughput on both paths and the cache size."""
    lines: list[str] = []
    dl = res["data_loading"]
    lines += ["", "## Data loading", ""]
    if isinstance(dl, dict):
        lines += _table(
            ["images", "size", "workers", "JPEG decode img/s", "cache img/s", "speedup"],
            [
                [
                    dl["images"],
                    dl["image_size"],
                    dl["num_workers"],
                    dl["uncached_img_s"],
                    dl["cached_img_s"],
                    dl["speedup"],
                ]
            ],
        )
        # The GPU input path beside the float CPU path, measured side by side (data/device_transforms.py).
        keys = ("stored_side", "float_cpu_img_s", "uint8_device_img_s", "uint8_over_float", "batch_bytes_float",
                "batch_bytes_uint8")  # fmt: skip
        rows = [["photos", *(dl.get(k) for k in keys)]]
        cifar = dl.get("cifar_like")
        if isinstance(cifar, dict):
            rows.append(["CIFAR-like", *(cifar.get(k) for k in keys)])
        lines += [""]
        lines += _table(
            ["images", "stored side", "float CPU img/s", "uint8 device img/s", "ratio", "float bytes/batch",
             "uint8 bytes/batch"],
            rows,
        )  # fmt: skip
        six = dl.get("cache_size_six")
        if isinstance(six, dict):
            lines += ["", f"Image cache for the six datasets at {six['image_size']} px: {six['total_gib']} GiB "
                      f"(target {six['target_gib']} GiB; the old layout: {six['old_layout_gib']} GiB); pooled split: "
                      f"{dl.get('cache_size_six_pooled')} GiB."]  # fmt: skip
    else:
        lines.append(str(dl))
    return lines


def render_markdown(res: dict[str, Any]) -> str:
    """The summary: machine, targets with pass/fail, then one table per figure."""
    lines: list[str] = []
    for section in (_targets_md, _mimicry_md, _train_step_md, _inference_md, _switch_md, _sizes_md, _loading_md):
        lines += section(res)
    lines += ["", "## GPU", "", str(res["gpu"]) if not isinstance(res["gpu"], dict) else "see perf.json `gpu`", ""]
    return "\n".join(lines)
