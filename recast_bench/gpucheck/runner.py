"""Runs the GPU check: preflight, every case for one epoch, the throughput ceiling; prints a table, writes JSON."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from recast_bench.errors import UserError
from recast_bench.gpucheck.cases import AVALANCHE, Case, classify, plan

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets.py"
CPU_STREAM = [
    "stream=synthetic", "++stream.num_tasks=2", "++stream.classes_per_task=[3,4]", "++stream.train_per_class=8",
    "++stream.val_per_class=2", "++stream.test_per_class=4", "trainer=tiny", "trainer.batch_size=8",
    "method.gdumb.mem_size=12", "method.derpp.mem_per_class=3", "method.er-ace.mem_per_class=3",
    "method.recast.mimic_iters=10",
]  # fmt: skip
"""The CPU form: two small synthetic tasks and tiny replay memories (the plumbing of every case, quickly)."""


def _load_fixtures() -> Any | None:
    if not FIXTURES.is_file():
        return None
    spec = importlib.util.spec_from_file_location("recast_bench_fixture_datasets", FIXTURES)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def gpu_data(work: Path) -> list[str]:
    """Flowers102 + CIFAR-10 in their native formats (CIFAR-10 at 600 images per class, to time an epoch); a
    synthetic stream of the same size when the test fixtures are not in this checkout."""
    fx = _load_fixtures()
    if fx is None:
        return ["stream=synthetic", "++stream.num_tasks=2", "++stream.classes_per_task=[10,10]",
                "++stream.train_per_class=600", "++stream.val_per_class=60", "++stream.test_per_class=100"]  # fmt: skip
    root = work / "data"
    if not (root / ".written").exists():
        fx.write_flowers102(root, per_split=(10, 5, 10), classes=10, wh=(300, 250))
        fx.write_cifar10(root, train_per_class=600, test_per_class=100, classes=10)
        (root / ".written").touch()
    return ["stream=six", "stream.tasks=[flowers102,cifar10]", f"paths.data_dir={root}"]


def run_overrides(case: Case, data: list[str], work: Path) -> list[str]:
    parts = case.method_name.split("+")
    # a method.X.* override composes only when X is part of the run's method
    data = [o for o in data if not o.startswith("method.") or o.split(".")[1] in parts]
    return [
        *data, f"paths.cache_dir={work / 'cache'}", "++backbone.allow_random_init=true", "trainer.epochs=1",
        "logger=none", "trainer.progress_bar=false", *case.variant_overrides(), *case.overrides,
    ]  # fmt: skip


def stream_counts(case: Case, overrides: list[str], memo: dict) -> tuple[int, int]:
    """(training images per epoch, evaluation images of the run: val per epoch plus every re-test)."""
    from recast_bench.backbones import get_spec
    from recast_bench.config import compose_config
    from recast_bench.data.stream import build_stream

    spec = get_spec(case.backbone)
    key = (spec.image_size, tuple(o for o in overrides if o.startswith(("stream", "++stream", "paths"))))
    if key not in memo:
        cfg = compose_config([f"backbone={case.backbone}", *(o for o in overrides if not o.startswith("method."))])
        tasks = build_stream(cfg.stream, image_size=spec.image_size, cache_dir=cfg.paths.cache_dir)
        n = len(tasks)
        memo[key] = (
            sum(len(t.train) for t in tasks),
            sum(len(t.val) for t in tasks) + sum(len(t.test) * (n - i) for i, t in enumerate(tasks)),
        )
    return memo[key]


def _cli_args(case: Case, out: Path, overrides: list[str]) -> list[str]:
    return ["run", "--method", case.method_name, "--backbone", case.backbone, "--out", str(out), *overrides]


def run_inprocess(case: Case, out: Path, overrides: list[str]) -> tuple[int, str, list[str]]:
    from recast_bench.cli import main as cli_main
    from recast_bench.gpucheck.evalprobe import probe

    err = io.StringIO()
    try:
        with probe() as devices, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(_cli_args(case, out, overrides))
    except Exception:  # noqa: BLE001 (the check reports every failure as a case result)
        return 1, err.getvalue() + traceback.format_exc(), devices
    return rc, err.getvalue(), devices


def run_subprocess(case: Case, out: Path, overrides: list[str], timeout: float) -> tuple[int, str, list[str]]:
    probe_file = out.parent / f".{out.name}.evals"
    cmd = [sys.executable, "-m", "recast_bench.gpucheck.evalprobe", str(probe_file), *_cli_args(case, out, overrides)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = 124, f"timed out after {timeout:.0f} s\n{(e.stderr or b'')[-2000:]!r}"
    devices: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        devices = json.loads(Path(f"{probe_file}.0").read_text())
    return rc, err, devices


def run_case(case: Case, work: Path, data: list[str], isolate: bool, timeout: float, memo: dict) -> dict:
    out = work / "runs" / case.name.replace("/", "-").replace("@", "_")
    overrides = run_overrides(case, data, work)
    row: dict[str, Any] = {"case": case.name, "group": case.group, "backbone": case.backbone, "method": case.method}
    start = time.perf_counter()
    if case.group == "mimicry":
        return row | run_mimicry(case, work) | {"wall_s": round(time.perf_counter() - start, 2)}
    try:
        train_imgs, eval_imgs = stream_counts(case, overrides, memo)
    except Exception as e:  # noqa: BLE001
        return row | {"status": "fail", "failure_class": classify(str(e)), "error": str(e).splitlines()[0]}
    if isolate:
        rc, err, devices = run_subprocess(case, out, overrides, timeout)
    else:
        rc, err, devices = run_inprocess(case, out, overrides)
    row["wall_s"] = round(time.perf_counter() - start, 2)
    row["exit_code"] = rc
    res: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        res = json.loads((out / "results.json").read_text())
    train_s = sum(s for s in res.get("train_s_per_task") or [] if s)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    wrong = sorted({d for d in devices if not d.startswith(expected)})
    row |= {
        "status": "pass" if rc == 0 and res.get("status") == "complete" and not wrong else "fail",
        "tasks_done": res.get("completed_tasks", 0),
        "tasks": len(res.get("tasks") or []),
        "train_s": round(train_s, 3),
        "train_img_s": round(train_imgs * int(res.get("config", {}).get("trainer", {}).get("epochs", 1)) / train_s, 1)
        if train_s
        else None,
        "eval_img_s": round(eval_imgs / (res["wall_s"] - train_s), 1)
        if res.get("wall_s") and res["wall_s"] > train_s
        else None,
        "peak_gpu_mem_mb": res.get("peak_gpu_mem_mb"),
        "peak_rss_mb": res.get("peak_rss_mb"),
        "device": res.get("device"),
        "precision": res.get("precision"),
        "profile": (res.get("profile") or {}).get("name"),
        "eval_devices": sorted(set(devices)),
    }
    if row["status"] == "fail":
        text = err if rc != 0 else f"evaluated on {', '.join(wrong)}, not {expected}" if wrong else "run incomplete"
        row["failure_class"] = classify(text)
        row["error"] = _last_error_line(text)
    return row


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "exception" in ln.lower():
            return ln[:400]
    return (lines[-1] if lines else "")[:400]


def run_mimicry(case: Case, work: Path) -> dict:
    """The paper's Neural Mimicry on the run's device: time, memory and the minimum weight cosine."""
    from recast_bench.perf.mimic import mimic_one

    cuda = torch.cuda.is_available()
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        r = mimic_one(
            case.backbone, "random", None if cuda else 20, 0, str(work / "weights"), "cuda" if cuda else "cpu"
        )
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {e}"
        return {"status": "fail", "failure_class": classify(text), "error": text.splitlines()[0][:400]}
    row = {
        "status": "pass",
        "mimic_s": r.get("seconds"),
        "min_cosine": r.get("min_cosine"),
        "iters_run": r.get("iters_run"),
        "peak_rss_mb": r.get("peak_rss_mb"),
    }
    if cuda:
        row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def ceilings(tiny: bool) -> dict[str, Any]:
    """Training throughput ceiling per backbone and precision mode (tiny backbones, few steps on the CPU)."""
    from recast_bench.backbones import build_backbone
    from recast_bench.perf.gpu import training_ceiling

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (("vit_tiny", 8), ("resnet_tiny", 8)) if tiny else (("vit_small", 128), ("resnet34", 64))
    out: dict[str, Any] = {}
    for name, batch in names:
        try:
            backbone, spec, _ = build_backbone(name, None, "/nonexistent", allow_random_init=True)
            steps, warmup = (2, 1) if tiny else (20, 5)
            out[name] = training_ceiling(
                backbone, device, batch, spec.image_size, steps, warmup, channels_last_ok=spec.family == "resnet"
            ) | {"batch": batch}
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return out


def fractions(rows: list[dict], ceiling: dict[str, Any]) -> dict[str, float]:
    """End-to-end training images/s of recast, recast+adaptformer and clr as a fraction of the bf16 ceiling."""
    out = {}
    for r in rows:
        if r["group"] != "default" or r["method"] not in ("recast", "recast+adaptformer", "clr"):
            continue
        c = ceiling.get(r["backbone"], {})
        top = c.get("bf16_channels_last") or c.get("bf16")
        if r.get("train_img_s") and top:
            out[f"{r['backbone']}/{r['method']}"] = round(r["train_img_s"] / top, 3)
    return out


def print_table(rows: list[dict]) -> None:
    head = f"{'case':<44}{'status':<7}{'class':<24}{'wall s':>8}{'tasks':>7}{'img/s':>9}{'peak MB':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        tasks = f"{r.get('tasks_done', '-')}/{r.get('tasks', '-')}" if "tasks" in r else "-"
        ips = f"{r['train_img_s']:.0f}" if r.get("train_img_s") else "-"
        mem = r.get("peak_gpu_mem_mb") or r.get("peak_rss_mb")
        print(
            f"{r['case']:<44}{r['status']:<7}{r.get('failure_class', ''):<24}{r.get('wall_s', 0):>8.1f}{tasks:>7}"
            f"{ips:>9}{(f'{mem:.0f}' if mem else '-'):>9}"
        )
        if r["status"] != "pass" and r.get("error"):
            print(f"    {r['error']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recast_bench.gpucheck", description=__doc__)
    p.add_argument("--out", default="gpu-check.json", help="the JSON report (recast-bench cost reads it)")
    p.add_argument("--work", help="where runs, data and cache go (default: a temporary directory)")
    p.add_argument("--only", nargs="*", help="run only cases whose name contains one of these strings")
    p.add_argument("--cpu-form", action="store_true", help="the tiny CPU form even where CUDA is present")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="one process per case (auto: on CUDA, where a fault can poison the process)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per isolated case")
    p.add_argument("--no-ceiling", action="store_true", help="skip the throughput ceiling")
    return p


def main(argv: list[str] | None = None) -> int:
    from recast_bench.gpucheck.preflight import preflight

    args = build_parser().parse_args(argv)
    try:
        pre = preflight()
    except UserError as e:
        print(f"gpu-check: error: {e}", file=sys.stderr)
        return 2
    cuda = pre["cuda_available"] and not args.cpu_form
    tiny = not cuda
    print(f"gpu-check: {'CUDA: ' + pre['gpu'] if cuda else 'no CUDA: the CPU form on tiny backbones'}; torch "
          f"{pre['torch']} (CUDA {pre['torch_cuda']}, {' '.join(pre['arch_list']) or 'no archs'}); "
          f"/dev/shm {pre['shm_gb']} GiB; {pre['cpus']} CPUs")  # fmt: skip
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        data = gpu_data(work) if cuda else CPU_STREAM
        cases = plan(pre["gpus"] if cuda else 0, tiny)
        if args.only:
            cases = [c for c in cases if any(s in c.name for s in args.only)]
        isolate = args.isolate == "yes" or (args.isolate == "auto" and cuda)
        if not cuda:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
        rows, memo = [], {}
        for case in cases:
            if case.method_name in AVALANCHE and case.group == "ddp":
                continue  # avalanche refuses DDP by design (a one-line error, tested on the CPU)
            row = run_case(case, work, data, isolate, args.timeout, memo)
            rows.append(row)
            print(f"  {row['case']}: {row['status']}"
                  + (f" ({row.get('failure_class')}: {row.get('error', '')})" if row["status"] != "pass" else ""),
                  flush=True)  # fmt: skip
        ceiling = {} if args.no_ceiling else ceilings(tiny)
    report = {
        "device": {"type": "cuda" if cuda else "cpu", "name": pre.get("gpu"), "form": "gpu" if cuda else "cpu"},
        "preflight": pre,
        "cases": rows,
        "ceiling_img_s": ceiling,
        "fraction_of_bf16_ceiling": fractions(rows, ceiling),
        "passed": sum(r["status"] == "pass" for r in rows),
        "failed": sum(r["status"] != "pass" for r in rows),
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(rows)
    if ceiling:
        for name, c in ceiling.items():
            figures = ", ".join(f"{k} {v:.0f}" for k, v in c.items() if k != "batch" and isinstance(v, float))
            print(f"ceiling {name} (train img/s, batch {c.get('batch')}): {figures or c.get('error')}")
    print(f"gpu-check: {report['passed']} passed, {report['failed']} failed; wrote {args.out}")
    return 0 if report["failed"] == 0 else 1
