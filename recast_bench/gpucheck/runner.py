"""Runs the GPU check: preflight, the throughput ceiling, every case under the time budget; prints a table and
writes the JSON report (``recast-bench cost`` reads its ``cost_inputs``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from recast_bench.errors import UserError
from recast_bench.gpucheck import cases as C
from recast_bench.gpucheck.cases import Case, classify, plan
from recast_bench.gpucheck.figures import TaskCounts, case_timing, cost_inputs
from recast_bench.gpucheck.schedule import Outcome, Scheduler, run_in_process

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "datasets.py"
CPU_STREAM = [
    "stream=synthetic", "++stream.num_tasks=2", "++stream.classes_per_task=[3,4]", "++stream.train_per_class=8",
    "++stream.val_per_class=2", "++stream.test_per_class=4", "trainer=tiny", "trainer.batch_size=8",
    "method.gdumb.mem_size=12", "method.derpp.mem_per_class=3", "method.er-ace.mem_per_class=3",
    "method.recast.mimic_iters=10",
]  # fmt: skip
"""The CPU form: two small synthetic tasks and tiny replay memories (the plumbing of every case, quickly)."""
CPU_CASE_LIMIT_S = 900.0
"""Per isolated case on a CPU, where the GPU budget does not apply."""


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
                f"++stream.train_per_class={C.CIFAR_TRAIN_PER_CLASS}", "++stream.val_per_class=60",
                f"++stream.test_per_class={C.CIFAR_TEST_PER_CLASS}"]  # fmt: skip
    root = work / "data"
    if not (root / ".written").exists():
        fx.write_flowers102(root, per_split=C.FLOWERS_PER_SPLIT, classes=10, wh=(300, 250))
        fx.write_cifar10(root, train_per_class=C.CIFAR_TRAIN_PER_CLASS, test_per_class=C.CIFAR_TEST_PER_CLASS,
                         classes=10)  # fmt: skip
        (root / ".written").touch()
    return ["stream=six", "stream.tasks=[flowers102,cifar10]", f"paths.data_dir={root}"]


def run_overrides(
    case: Case, data: list[str], work: Path, extra: tuple[str, ...] = (), compiled: bool = False
) -> list[str]:
    """The case's ``recast-bench run`` overrides; ``compiled``: the profile compiles, and a case that should not
    (``case.compile == "off"``, see cases.py) turns it off."""
    parts = case.method_name.split("+")
    # a method.X.* override composes only when X is part of the run's method
    data = [o for o in data if not o.startswith("method.") or o.split(".")[1] in parts]
    return [
        *data, f"paths.cache_dir={work / 'cache'}", "++backbone.allow_random_init=true",
        f"trainer.epochs={case.epochs}", "logger=none", "trainer.progress_bar=false", *case.variant_overrides(),
        *case.overrides, *(["trainer.compile=false"] if compiled and case.compile == "off" else []), *extra,
    ]  # fmt: skip


def stream_counts(case: Case, overrides: list[str], memo: dict) -> list[TaskCounts]:
    """Per task: training images per epoch, validation and test images (building the stream's cache once)."""
    from recast_bench.backbones import get_spec
    from recast_bench.config import compose_config
    from recast_bench.data.stream import build_stream

    spec = get_spec(case.backbone)
    key = (spec.image_size, tuple(o for o in overrides if o.startswith(("stream", "++stream", "paths"))))
    if key not in memo:
        cfg = compose_config([f"backbone={case.backbone}", *(o for o in overrides if not o.startswith("method."))])
        tasks = build_stream(cfg.stream, image_size=spec.image_size, cache_dir=cfg.paths.cache_dir)
        memo[key] = [TaskCounts(len(t.train), len(t.val), len(t.test)) for t in tasks]
    return memo[key]


def run_dir(case: Case, work: Path) -> Path:
    return work / "runs" / case.name.replace("/", "-").replace("@", "_").replace("#", "_")


def case_row(case: Case, out: Outcome, work: Path, counts: list[TaskCounts] | None, lanes: int) -> dict[str, Any]:
    """One line of the report: the case's outcome and what its results.json says."""
    row: dict[str, Any] = {"case": case.name, "group": case.group, "backbone": case.backbone, "method": case.method,
                           "tag": case.tag, "bb_family": case.bb_family}  # fmt: skip
    if out.skipped:
        return row | {"status": "skipped", "reason": out.skipped}
    res: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        res = json.loads((run_dir(case, work) / "results.json").read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    wrong = sorted({d for d in out.devices if not d.startswith(expected)})
    timing = case_timing(res, counts) if counts else None
    row |= {
        "status": "pass" if out.rc == 0 and res.get("status") == "complete" and not wrong else "fail",
        "exit_code": out.rc,
        "wall_s": out.wall_s,
        "process_s": out.process_s,
        "limit_s": out.limit_s,
        "run_wall_s": res.get("wall_s"),
        "tasks_done": res.get("completed_tasks", 0),
        "tasks": len(res.get("tasks") or []),
        "img_s": (timing or {}).get("img_s"),
        "img_s_device": (timing or {}).get("img_s_device"),
        "eval_img_s": (timing or {}).get("eval_img_s"),
        "timing": timing,
        "compile": res.get("compile"),
        "shared_gpu_with": lanes - 1 if case.group in ("default", "eval-device", "determinism") else 0,
        "peak_gpu_mem_mb": res.get("peak_gpu_mem_mb"),
        "peak_rss_mb": res.get("peak_rss_mb"),
        "batch_size": ((res.get("config") or {}).get("trainer") or {}).get("batch_size"),  # the card's, resolved
        "device": res.get("device"),
        "precision": res.get("precision"),
        "profile": (res.get("profile") or {}).get("name"),
        "eval_devices": sorted(set(out.devices)),
    }
    if row["status"] == "fail":
        text = out.log if out.rc != 0 else f"evaluated on {', '.join(wrong)}, not {expected}" if wrong else "incomplete"
        row["failure_class"] = "timeout" if out.rc == 124 else classify(text)
        row["error"] = _last_error_line(text)
    return row


def _why(row: dict[str, Any]) -> str:
    if row["status"] == "fail":
        return f" ({row.get('failure_class')}: {row.get('error', '')})"
    return f" ({row['reason']})" if row.get("reason") else ""


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "exception" in ln.lower() or "timed out" in ln:
            return ln[:400]
    return (lines[-1] if lines else "")[:400]


def run_mimicry(case: Case, work: Path) -> dict:
    """The paper's Neural Mimicry on the run's device: time, memory and the minimum weight cosine."""
    from recast_bench.perf.common import PeakCuda
    from recast_bench.perf.mimic import mimic_one

    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    try:
        with PeakCuda() as peak:
            r = mimic_one(
                case.backbone, "random", None if cuda else 20, 0, str(work / "weights"), "cuda" if cuda else "cpu"
            )
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {e}"
        return {"status": "fail", "failure_class": classify(text), "error": text.splitlines()[0][:400]}
    row = {
        "status": "pass",
        "wall_s": round(time.perf_counter() - start, 2),
        "mimic_s": r.get("seconds"),
        "min_cosine": r.get("min_cosine"),
        "iters_run": r.get("iters_run"),
        "peak_rss_mb": r.get("peak_rss_mb"),
    }
    if peak.mb is not None:
        row["peak_gpu_mem_mb"] = peak.mb
    return row


def ceilings(tiny: bool) -> dict[str, Any]:
    """Training throughput ceiling per backbone and precision mode (tiny backbones, few steps on the CPU), with the
    FLOPs per image and, on a listed card, the fraction of its bf16 peak."""
    from recast_bench.perf.gpu import ceiling_row
    from recast_bench.perf.models import seeded_backbone

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (("vit_tiny", 8), ("resnet_tiny", 8)) if tiny else (("vit_small", 128), ("resnet34", 64))
    out: dict[str, Any] = {}
    for name, batch in names:
        try:
            backbone, spec, _ = seeded_backbone(name, 0, "/nonexistent")  # random weights: the speed is the same
            out[name] = ceiling_row(backbone, spec, device, batch, *((2, 1) if tiny else (20, 5)))
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return out


def fractions(rows: list[dict], ceiling: dict[str, Any]) -> dict[str, float]:
    """Steady end-to-end training images/s of recast, recast+adaptformer and clr as a fraction of the bf16 ceiling
    (recast: its timing case, alone on the GPU; the others from their default-profile case)."""
    out = {}
    for r in rows:
        alone = r["group"] == "timing" and r.get("tag") == "3ep"
        if not (alone or (r["group"] == "default" and r["method"] in ("recast+adaptformer", "clr"))):
            continue
        c = ceiling.get(r["backbone"], {})
        top = c.get("bf16_channels_last") or c.get("bf16")
        if r.get("img_s") and top:
            out[f"{r['backbone']}/{r['method']}"] = round(r["img_s"] / top, 3)
    return out


def print_table(rows: list[dict]) -> None:
    head = f"{'case':<48}{'status':<8}{'class':<22}{'wall s':>8}{'tasks':>7}{'img/s':>9}{'peak MB':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        tasks = f"{r.get('tasks_done', '-')}/{r.get('tasks', '-')}" if "tasks" in r else "-"
        ips = f"{r['img_s']:.0f}" if r.get("img_s") else "-"
        mem = r.get("peak_gpu_mem_mb") or r.get("peak_rss_mb")
        print(
            f"{r['case']:<48}{r['status']:<8}{r.get('failure_class', ''):<22}{r.get('wall_s') or 0:>8.1f}{tasks:>7}"
            f"{ips:>9}{(f'{mem:.0f}' if mem else '-'):>9}"
        )
        if r["status"] == "fail" and r.get("error"):
            print(f"    {r['error']}")
        elif r["status"] in ("skipped", "n/a"):
            print(f"    {r['reason']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recast_bench.gpucheck", description=__doc__)
    p.add_argument("--out", default="gpu-check.json", help="the JSON report (recast-bench cost reads it)")
    p.add_argument("--work", help="where runs, data and cache go (default: a temporary directory)")
    p.add_argument("--only", nargs="*", help="run only cases whose name contains one of these strings")
    p.add_argument("--cpu-form", action="store_true", help="the tiny CPU form even where CUDA is present")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="cases in child processes (auto: on CUDA, where a fault can poison the process)")  # fmt: skip
    p.add_argument("--lanes", type=int, help=f"processes sharing the GPU at once (default: {C.DEFAULT_LANES} on CUDA)")
    p.add_argument("--deadline", type=float, default=C.DEADLINE_S, help="seconds for the whole check")
    p.add_argument("--case-limit", type=float, help="seconds per case (default: 3x its modelled time on CUDA)")
    p.add_argument("--set", nargs="*", default=[], metavar="OVERRIDE", help="Hydra overrides for every case")
    p.add_argument("--compile-all", action="store_true",
                   help="compile every case where the profile compiles (default: the methods of tests/test_compile.py "
                   "and the timing cases; all of them: 757 s modelled, give --deadline 900)")  # fmt: skip
    p.add_argument("--no-ceiling", action="store_true", help="skip the throughput ceiling")
    return p


def _is_avalanche(method: str) -> bool:
    from recast_bench.registry import METHODS, load_all

    load_all()  # registers names only: avalanche itself is not imported
    return any(getattr(METHODS.get(p), "runner", "lightning") == "avalanche" for p in method.split("+"))


def _header(pre: dict[str, Any], cuda: bool) -> str:
    return (
        f"gpu-check: {'CUDA: ' + pre['gpu'] if cuda else 'no CUDA: the CPU form on tiny backbones'}; torch "
        f"{pre['torch']} (CUDA {pre['torch_cuda']}, {' '.join(pre['arch_list']) or 'no archs'}); /dev/shm "
        f"{pre.get('shm_gb')} GiB ({pre.get('shm_need_gb')} GiB needed); {pre['cpus']} CPUs"
    )


def _shm(pre: dict[str, Any], cuda: bool, lanes: int) -> dict[str, Any]:
    """/dev/shm against the check's ``lanes`` concurrent runs: the GPU profile's workers (CPUs per run, at most 8)
    and the larger of the default batch sizes, of 224 px models' 256 px photo squares."""
    from recast_bench.config import TrainerConfig
    from recast_bench.data.transforms import cache_side
    from recast_bench.engine.device import MAX_WORKERS
    from recast_bench.gpucheck.preflight import shm_check

    workers = min(max(1, pre["cpus"] // lanes), MAX_WORKERS) if cuda else 0
    t = TrainerConfig()
    return shm_check(lanes, workers, max(t.batch_size, t.eval_batch_size), cache_side(224))


def main(argv: list[str] | None = None) -> int:
    from recast_bench.gpucheck.preflight import preflight
    from recast_bench.gpucheck.stack import AVALANCHE, problem

    args = build_parser().parse_args(argv)
    t_start = time.time()
    deadline = t_start + args.deadline
    try:
        pre = preflight()
        cuda = pre["cuda_available"] and not args.cpu_form
        lanes = args.lanes or (C.DEFAULT_LANES if cuda else 1)
        pre |= _shm(pre, cuda, lanes)
    except UserError as e:
        print(f"gpu-check: error: {e}", file=sys.stderr)
        return 2
    tiny = not cuda
    print(_header(pre, cuda))
    if pre.get("shm_warning"):
        print(f"gpu-check: warning: {pre['shm_warning']}")
    isolate = args.isolate == "yes" or (args.isolate == "auto" and cuda)
    gpus = pre["gpus"] if cuda else 0
    compiled = bool(cuda and _profile_compiles())
    cases = plan(gpus, tiny, compiled, args.compile_all)
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    na = {c.name: C.not_applicable(c, gpus, not isolate) for c in cases}
    runnable = [c for c in cases if not na[c.name]]
    if any(_is_avalanche(c.method_name) for c in runnable) and (line := problem(AVALANCHE, "the Avalanche cases")):
        print(f"gpu-check: warning: {line}; those cases will fail")
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        ceiling = {} if args.no_ceiling else ceilings(tiny)
        if cuda:
            torch.cuda.empty_cache()  # the cases' processes get the memory the ceiling's models held
        rows, counts, budget = _run_cases(args, runnable, work, cuda, isolate, lanes, compiled, deadline)
    order = {c.name: i for i, c in enumerate(cases)}
    rows += [{"case": c.name, "group": c.group, "backbone": c.backbone, "method": c.method, "status": "n/a",
              "reason": na[c.name]} for c in cases if na[c.name]]  # fmt: skip
    rows.sort(key=lambda r: order[r["case"]])
    report = _report(pre, cuda, rows, ceiling, budget, compiled, time.time() - t_start)
    report["cost_inputs"] = cost_inputs(rows, counts, _batch())
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(rows)
    for name, c in ceiling.items():
        figures = ", ".join(f"{k} {v:.0f}" for k, v in c.items() if k in ("fp32", "tf32", "bf16", "bf16_channels_last"))
        print(f"ceiling {name} (train img/s, batch {c.get('batch')}; {c.get('train_gflop', 0):.3g} GFLOP/img): "
              f"{figures or c.get('error')}")  # fmt: skip
    print(f"gpu-check: {report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped "
          f"({report['not_applicable']} n/a here) in {report['wall_s']:.0f} s; wrote {args.out}")  # fmt: skip
    if report["skipped"]:
        print("gpu-check: skipped cases were not checked; run them with --only NAME ...")
    return 0 if report["failed"] == 0 and report["skipped"] == 0 else 1


def _profile_compiles() -> bool:
    from recast_bench.cost import profile_compiles

    return profile_compiles("vit")


def _run_cases(
    args: argparse.Namespace, cases: list[Case], work: Path, cuda: bool, isolate: bool, lanes: int, compiled: bool,
    deadline: float,
) -> tuple[list[dict], dict[str, list[TaskCounts]], dict]:  # fmt: skip
    """Every case (jobs through the scheduler or in this process, then mimicry here): the rows, each run's task
    sizes, and the modelled budget."""
    data = gpu_data(work) if cuda else CPU_STREAM
    counts: dict[str, list[TaskCounts]] = {}
    memo: dict = {}
    argv: dict[str, list[str]] = {}
    for c in cases:
        if c.group == "mimicry":
            continue
        overrides = run_overrides(c, data, work, tuple(args.set), compiled)
        counts[c.name] = stream_counts(c, overrides, memo)
        argv[c.name] = ["run", "--method", c.method_name, "--backbone", c.backbone, "--out", str(run_dir(c, work)),
                        *overrides]  # fmt: skip
    job_list = C.jobs(cases, _is_avalanche)
    budget = C.budget(job_list, lanes) if cuda else {}
    if budget:
        print(f"gpu-check: modelled {budget['total_s']:.0f} s for {len(cases)} cases in {len(job_list)} jobs, "
              f"{lanes} at once; deadline {args.deadline:.0f} s")  # fmt: skip

    def limit(c: Case) -> float:
        return args.case_limit or (C.limit_s(c) if cuda else CPU_CASE_LIMIT_S)

    def expected(j: C.Job) -> float | None:
        return C.job_expected_s(j) if cuda else None

    runs = [j for j in job_list if not j.in_parent]
    if isolate:
        sched = Scheduler(work, lambda c: argv[c.name], limit, expected, deadline, lanes, cwd=ROOT)
        outcomes = sched.run(runs)
    else:
        if not cuda:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
        outcomes = run_in_process(runs, work, lambda c: argv[c.name], deadline)
    rows = []
    for c in cases:
        if c.group == "mimicry":
            continue
        row = case_row(c, outcomes[c.name], work, counts.get(c.name), lanes if isolate else 1)
        rows.append(row)
        print(f"  {row['case']}: {row['status']}{_why(row)}", flush=True)
    for j in job_list:
        if not j.in_parent:
            continue
        for c in j.cases:
            base = {"case": c.name, "group": c.group, "backbone": c.backbone, "method": c.method, "tag": c.tag,
                    "bb_family": c.bb_family}  # fmt: skip
            need = expected(j) or 0.0
            if time.time() + need > deadline:
                rows.append(base | {"status": "skipped", "reason": "not started: the check's deadline was reached"})
            else:
                rows.append(base | run_mimicry(c, work))
    return rows, counts, budget


def _batch() -> int:
    from recast_bench.config import TrainerConfig

    return int(TrainerConfig().batch_size)


def _report(
    pre: dict, cuda: bool, rows: list[dict], ceiling: dict, budget: dict, compiled: bool, wall: float
) -> dict[str, Any]:
    return {
        "device": {"type": "cuda" if cuda else "cpu", "name": pre.get("gpu"), "form": "gpu" if cuda else "cpu"},
        "preflight": pre,
        "compile": compiled,
        "budget_modelled_s": budget,
        "wall_s": round(wall, 1),
        "cases": rows,
        "ceiling_img_s": ceiling,
        "fraction_of_bf16_ceiling": fractions(rows, ceiling),
        "passed": sum(r["status"] == "pass" for r in rows),
        "failed": sum(r["status"] == "fail" for r in rows),
        "skipped": sum(r["status"] == "skipped" for r in rows),
        "not_applicable": sum(r["status"] == "n/a" for r in rows),
    }
