"""``run_perf(cfg, out)``: every figure in turn, then ``perf.json`` and ``perf.md`` (written atomically).

A section that fails (for instance a method not yet in this checkout) becomes an ``unavailable: reason`` string
and the others still run; every number in the file is finite or replaced by such a string.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recast_bench.perf.common import error_reason, machine_info, non_finite_fields, unavailable
from recast_bench.perf.config import PerfConfig
from recast_bench.perf.gpu import gpu_figures
from recast_bench.perf.inference import deploy_models, inference_figures
from recast_bench.perf.loading import loading_figures
from recast_bench.perf.mimic import mimicry_figures
from recast_bench.perf.report import check_targets, render_markdown
from recast_bench.perf.sizes import size_figures
from recast_bench.perf.switch import switch_figures
from recast_bench.perf.train_step import train_step_figures


def _section(name: str, fn: Callable[[], Any], seconds: dict[str, float], echo: bool) -> Any:
    if echo:
        print(f"perf: {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 (report the failure in the figure, keep measuring the rest)
        value = unavailable(error_reason(e))
        if echo:
            print(f"perf: {name} failed: {value}", file=sys.stderr, flush=True)
    seconds[name] = round(time.perf_counter() - t0, 2)
    return value


def run_perf(cfg: PerfConfig, out: str | Path | None = None, echo: bool = True) -> dict[str, Any]:
    """Measure everything of :class:`PerfConfig`; write ``out/perf.json`` and ``out/perf.md`` when ``out`` is set."""
    from recast_bench.registry import load_all

    load_all()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out, echo)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: PerfConfig, out: str | Path | None, echo: bool) -> dict[str, Any]:
    from recast_bench.engine.checkpoint import write_json

    t0 = time.perf_counter()
    res: dict[str, Any] = {"machine": machine_info(), "config": cfg.to_dict()}
    res["config"] = {k: "default" if v is None else v for k, v in res["config"].items()}
    sec: dict[str, float] = {}
    ov = cfg.method_overrides()
    # Mimicry results for the method-level figures are cached here (never in the user's cache), so each backbone
    # is mimicked once per run; the mimicry figures themselves bypass the cache.
    with tempfile.TemporaryDirectory() as cache:
        res["mimicry"] = _section(
            "mimicry",
            lambda: mimicry_figures(
                cfg.mimic_backbones, cfg.random_iters_cap, cfg.seed, cfg.weights_dir, cfg.recast_groups
            ),
            sec,
            echo,
        )
        res["train_step"] = _section(
            "train_step",
            lambda: train_step_figures(cfg, cache),
            sec,
            echo,
        )
        deployed = _section(
            "deploy_models", lambda: deploy_models(cfg.train_backbone, cfg.seed, cache, cfg.weights_dir, ov), sec, echo
        )
        if isinstance(deployed, str):
            res["inference"] = res["task_switch"] = deployed
        else:
            plain, rec, method, spec = deployed
            size = cfg.image_size or spec.image_size
            res["inference"] = _section(
                "inference",
                lambda: inference_figures(
                    plain, rec, cfg.infer_batch, size, cfg.infer_warmup, cfg.infer_repeats, cfg.seed
                ),
                sec,
                echo,
            )
            res["task_switch"] = _section(
                "task_switch", lambda: switch_figures(rec, method, cfg.switch_repeats, cfg.seed, size), sec, echo
            )
            del plain, rec, method
        res["sizes"] = _section(
            "sizes", lambda: size_figures(cfg.size_backbones, cfg.seed, cache, cfg.weights_dir, ov), sec, echo
        )
        res["data_loading"] = _section(
            "data_loading",
            lambda: loading_figures(
                cfg.data_images, cfg.data_image_size, cfg.data_workers, cfg.data_batch, cfg.data_epochs
            ),
            sec,
            echo,
        )
        res["gpu"] = _section("gpu", lambda: gpu_figures(cfg.seed, cache, cfg.weights_dir), sec, echo)
    res["targets"] = check_targets(res, cfg.target_vit, cfg.target_resnet)
    res["section_seconds"] = sec
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    bad = non_finite_fields(res)
    if bad:  # a NaN or None slipped through: name it in the file rather than write an unreadable number
        res["non_finite_fields"] = bad
        for path in bad:
            _replace(res, path, unavailable("not finite"))
    if out is not None:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "perf.json", res)
        md = render_markdown(res)
        tmp = d / ".perf.md.tmp"
        tmp.write_text(md)
        tmp.replace(d / "perf.md")  # atomic: a reader sees the old summary or the new one
    return res


def _replace(obj: Any, path: str, value: Any) -> None:
    """Set the field at a ``non_finite_fields`` path (``a.b[2].c``)."""
    import re

    keys: list[Any] = []
    for part in path.split("."):
        m = re.match(r"^(.*?)((\[\d+\])*)$", part)
        assert m is not None
        if m.group(1):
            keys.append(m.group(1))
        keys += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    for k in keys[:-1]:
        obj = obj[k]
    obj[keys[-1]] = value
