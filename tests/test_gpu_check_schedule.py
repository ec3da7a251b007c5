"""The GPU check's time budget: the modelled plan fits 8 minutes, and the scheduler enforces per-case limits and the
deadline, survives a crashed process, runs jobs alone or together as asked, and never drops a case silently."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from recast_bench.gpucheck import cases as C
from recast_bench.gpucheck.cases import Case, Job
from recast_bench.gpucheck.runner import _is_avalanche
from recast_bench.gpucheck.schedule import Scheduler

# A stand-in for group.py: each case's first argument says what it does (no torch, so it starts in milliseconds).
CHILD = """
import json, os, sys, time
spec = json.load(open(sys.argv[1]))
status = spec["status_dir"]
for i, case in enumerate(spec["cases"]):
    t0 = time.time()
    json.dump(t0, open(f"{status}/{i}.start", "w"))
    what = case["argv"][0]
    open(f"{status}/{i}.log", "w").write(f"case {case['name']}: {what}\\n")
    if what == "sleep":
        time.sleep(60)
    if what == "crash":
        os._exit(3)
    rc = 0 if what == "ok" else 1
    json.dump({"rc": rc, "devices": ["cuda:0"], "t0": t0, "t1": time.time()}, open(f"{status}/{i}.json", "w"))
"""


def _scheduler(tmp_path: Path, deadline_s: float = 60.0, lanes: int = 1, expected=None) -> Scheduler:  # noqa: ANN001
    tmp_path.mkdir(parents=True, exist_ok=True)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    return Scheduler(
        tmp_path / "work", lambda c: [c.method], lambda c: 1.5, expected or (lambda j: None),
        time.time() + deadline_s, lanes, command=lambda spec: [sys.executable, str(child), str(spec)],
    )  # fmt: skip


def _case(what: str, tag: str) -> Case:
    return Case("default", "vit_small", what, tag=tag)


def test_limits_crashes_and_reruns(tmp_path):
    cases = [_case("ok", "1"), _case("sleep", "2"), _case("ok", "3"), _case("crash", "4"), _case("ok", "5")]
    start = time.time()
    out = _scheduler(tmp_path).run([Job(cases)])
    assert time.time() - start < 20
    by = {c.tag: out[c.name] for c in cases}
    assert by["1"].rc == 0 and by["1"].devices == ["cuda:0"] and by["1"].wall_s is not None
    assert by["2"].rc == 124 and "timed out after 2 s" in by["2"].log  # stopped at its limit (1.5 s)
    assert by["3"].rc == 0  # the rest of the stopped process ran again in a new one
    assert by["4"].rc == 3 and "the process died (exit 3) inside this case" in by["4"].log and "crash" in by["4"].log
    assert by["5"].rc == 0
    assert len(list((tmp_path / "work" / "status").iterdir())) == 3  # three processes for one job


def test_deadline_skips_by_name_and_alone_and_together(tmp_path):
    sleeper, after = _case("sleep", "1"), _case("ok", "2")
    out = _scheduler(tmp_path, deadline_s=1.0).run([Job([sleeper]), Job([after])])
    assert out[sleeper.name].skipped == "stopped at the check's deadline"
    assert out[after.name].skipped == "not started: the check's deadline was reached"

    sched = _scheduler(tmp_path / "b", expected=lambda j: 1e6 if j.cases[0].tag == "big" else None, lanes=2)
    pair = [Case("concurrency", "vit_small", "ok", tag=t) for t in ("a", "b")]
    big, solo = _case("ok", "big"), _case("ok", "solo")
    out = sched.run([Job([big]), Job(pair, alone=True, together=True), Job([solo], alone=True)])
    assert out[big.name].skipped.startswith("not started: its modelled 1000000 s would pass the deadline")
    starts = [json.loads((d / "0.start").read_text()) for d in sorted((tmp_path / "b" / "work" / "status").iterdir())]
    assert len(starts) == 3 and abs(starts[0] - starts[1]) < 1.0  # the pair started together, in two processes
    assert all(out[c.name].rc == 0 for c in (*pair, solo))


def test_the_modelled_check_fits_eight_minutes_on_one_gpu():
    for compiled in (False, True):
        cases = [c for c in C.plan(1, tiny=False, compiled=compiled) if not C.not_applicable(c, 1, False)]
        job_list = C.jobs(cases, _is_avalanche)
        assert {c.name for j in job_list for c in j.cases} == {c.name for c in cases}  # every case has a job
        b = C.budget(job_list, C.DEFAULT_LANES)
        assert b["total_s"] <= C.DEADLINE_S, b
        for j in job_list:
            kinds = {_is_avalanche(c.method_name) for c in j.cases}
            assert len(kinds) == 1 and len(j.cases) <= C.CASES_PER_PROCESS  # no Lightning case beside avalanche
            if any(c.group in ("timing", "determinism", "ddp") for c in j.cases):
                assert len(j.cases) == 1
            assert all(C.limit_s(c) >= C.LIMIT_FACTOR * C.expected_s(c) for c in j.cases)
        compiled_cases = {(c.group, c.backbone, c.method) for c in cases if c.compile != "off"}
        if compiled:
            assert ("default", "vit_small", "melo") in compiled_cases and (
                "default",
                "resnet34",
                "hat",
            ) not in compiled_cases
            assert {c.compile for c in cases if c.group == "timing"} == {
                "warm"
            }  # after the default recast's cold compile
        else:
            assert not compiled_cases
    names = [c.name for c in C.plan(2, tiny=False)]
    assert len(names) == len(set(names)) and "ddp/vit_small/recast" in names
    assert C.not_applicable(Case("ddp", "vit_small", "linear"), 1, False) and not C.not_applicable(
        Case("ddp", "vit_small", "linear"), 2, False
    )


def test_a_case_budget_is_its_counted_flops_over_the_sourced_mfu():
    """No unsourced images/s: RECAST's compute on the GPU form is its counted step (at its card's batch of 128) over
    the training images, plus evaluation, at perf/mfu.py's ViT MFU of the 989 TFLOP/s peak; replay costs more."""
    import pytest

    from recast_bench.perf import mfu
    from recast_bench.perf.flops import row_flops

    row = row_flops("vit_small", "recast")
    tested = 100 + (100 + 1000)  # every seen task re-tested after each task
    gflop = C.GPU_TRAIN_IMAGES * row.train(128) + (C.GPU_VAL_IMAGES + tested) * row.eval_image(256)
    for compiled, m in ((True, mfu.VIT_COMPILED), (False, mfu.VIT_EAGER)):
        expected = gflop / (m * mfu.H100_BF16_TFLOPS * 1e3)
        assert C.compute_s("recast", "vit_small", 1, compiled) == pytest.approx(expected)
    assert C.compute_s("recast", "vit_small", 3, True) > 2.5 * C.compute_s("recast", "vit_small", 1, True)
    assert C.compute_s("er-ace", "resnet34", 1, False) > C.compute_s("finetune", "resnet34", 1, False)
