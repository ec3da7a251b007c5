"""The cases of the GPU check (after ``shared/gpu/cases.md``), the processes they run in, their time budget, and the
classification of a failure's text.

**Processes** (:func:`jobs`). A case is one ``recast-bench run``. Cases that are safe to share a process run in one,
up to :data:`CASES_PER_PROCESS`, so Python, torch, Lightning and timm are imported once per group rather than once
per case: default-profile Lightning cases of one backbone (every one sets the same process-wide flags: TF32,
deterministic ``warn``, cuDNN autotuning), and Avalanche cases of one backbone (in processes of their own, so a
missing avalanche-lib touches no Lightning case). The group process resets torch.compile's caches between cases. A
case gets a process of its own when it changes process-wide state (``determinism``: hard-deterministic kernels),
spans processes (``ddp``), or is timed for the cost model (``timing``, ``concurrency``: a fresh process, alone on the
GPU, as each bench run starts). ``mimicry`` runs in the check's own process. Every case records the device of each
of its test evaluations and fails if one was not the GPU (cases.md's "evaluation device" check, on every method).

**Compile.** Where the GPU profile compiles, a cold compile of a method's graphs costs about a minute, too much for
every case in 8 minutes: the cases of :data:`COMPILED` keep the profile's ``trainer.compile`` (RECAST on both
backbones, RECAST+AdaptFormer, MeLo: the methods whose compiled and eager training are compared in
tests/test_compile.py), and so do the timing cases (RECAST again, with warm caches, as later bench runs have); the
other cases run with ``trainer.compile=false``. ``--compile-all`` compiles every case (757 s modelled).

**Budget** (:func:`expected_s`, :func:`limit_s`, :func:`budget`): the check must finish in 8 minutes on one H100 or
H200. Every figure below is MODELLED: no GPU has run this check yet. A case is stopped at its limit (3x its expected
time, at least a minute), and the check stops starting jobs at its deadline; whatever did not run is reported as
skipped, by name. A case's compute time is the cost model's (:func:`compute_s`: its counted FLOPs and its strategy's
passes over the sourced H100 MFU of perf/mfu.py); its fixed costs are the figures below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache

from recast_bench.perf.work import TaskSize
from recast_bench.protocol.rows import parse_row

VIT_METHODS = (
    "linear", "recast", "recast+adaptformer", "melo", "dora", "rosa@sparse_mlp", "rosa@full", "recast+rosa@sparse_mlp",
    "inflora", "l2p",
)  # fmt: skip
RESNET_METHODS = (
    "recast", "piggyback", "recast+piggyback", "hat", "clr", "recast+clr", "ewc", "lwf", "gdumb", "er-ace", "derpp",
)  # fmt: skip

COMPILED = {("vit", "recast"), ("vit", "recast+adaptformer"), ("vit", "melo"), ("resnet", "recast")}
"""(backbone family, method) of the default cases that compile where the profile does."""
CASES_PER_PROCESS = 3
"""Shared-process cases per process: short enough for the lanes to balance, long enough to save imports."""

# The GPU form's data (runner.gpu_data): Flowers102 at 10 classes x (10 train, 5 val, 10 test) and CIFAR-10 at 600
# train and 100 test images per class (10 % of train held out for val), as cases.md asks ("large enough to time an
# epoch": 84 steps of 64).
FLOWERS_PER_SPLIT = (10, 5, 10)
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 600, 100
GPU_TASKS = (TaskSize("flowers102", 100, 50, 100, 10), TaskSize("cifar10", 5400, 600, 1000, 10))
"""The GPU form's two tasks: Flowers102 at ``FLOWERS_PER_SPLIT`` per class, CIFAR-10's train split cut 90/10."""
GPU_TRAIN_IMAGES = sum(t.train for t in GPU_TASKS)
GPU_VAL_IMAGES = sum(t.val for t in GPU_TASKS)
GPU_TEST_IMAGES_EVALUATED = 100 + (100 + 1000)  # after task 0: flowers; after task 1: both


@dataclass
class Case:
    group: str
    """``default``, ``determinism``, ``eval-device``, ``ddp``, ``timing``, ``concurrency`` or ``mimicry``."""
    backbone: str
    method: str
    """A bench entry: NAME or NAME@VARIANT (RoSA's two rows)."""
    overrides: list[str] = field(default_factory=list)
    tag: str = ""
    """Tells apart cases of one group, backbone and method (``timing``: ``1ep``/``3ep``; ``concurrency``: a/b)."""
    epochs: int = 1
    compile: str = "off"
    """``off``, ``cold`` (the first compile of this method's graphs in the check) or ``warm`` (cached graphs)."""
    mimics: bool = False
    """The first RECAST run of its backbone in the plan: it runs Neural Mimicry, later runs read its cache."""

    @property
    def name(self) -> str:
        return f"{self.group}/{self.backbone}/{self.method}" + (f"#{self.tag}" if self.tag else "")

    @property
    def method_name(self) -> str:
        return parse_row(self.method).name

    @property
    def bb_family(self) -> str:
        return "resnet" if "resnet" in self.backbone else "vit"

    def variant_overrides(self) -> list[str]:
        return parse_row(self.method).variant_overrides()


def plan(gpus: int, tiny: bool, compiled: bool = False, compile_all: bool = False) -> list[Case]:
    """Every case; ``tiny``: the CPU form's backbones (same methods); ``compiled``: the GPU profile compiles (see the
    module docstring). :func:`not_applicable` says what a machine cannot run (DDP needs two GPUs, concurrency a GPU)."""
    vit, resnet = ("vit_tiny", "resnet_tiny") if tiny else ("vit_small", "resnet34")
    cases = [Case("default", vit, m) for m in VIT_METHODS]
    cases += [Case("default", resnet, m) for m in RESNET_METHODS]
    # cuBLAS determinism: RoSA and InfLoRA do GEMMs in on_task_start, before the first Trainer exists.
    cases += [Case("determinism", vit, m, ["trainer.deterministic=true"]) for m in ("rosa@sparse_mlp", "inflora")]
    ddp = [f"trainer.devices={max(gpus, 2)}", "trainer.strategy=ddp"]
    cases += [Case("ddp", vit, m, list(ddp)) for m in ("linear", "recast")]
    # The cost model's figures: a fresh process per run, alone on the GPU; 1 and 3 epochs tell the first epoch's
    # extra cost (loader start, compile, autotuning) from the steady per-epoch cost. Then two ViT runs at once.
    for bb in (vit, resnet):
        cases += [Case("timing", bb, "recast", tag=f"{e}ep", epochs=e) for e in (1, 3)]
    cases += [Case("concurrency", vit, "recast", tag=t, epochs=3) for t in ("a", "b")]
    first = {}
    for c in cases:
        if c.method_name.startswith("recast"):
            first.setdefault(c.backbone, c)
    for c in first.values():
        c.mimics = True
    cases += [Case("mimicry", b, "recast") for b in ((vit,) if tiny else ("vit_small", "vit_base"))]
    if compiled:
        seen: set[tuple[str, str]] = set()
        for c in cases:
            key = (c.backbone, c.method)
            if c.group == "mimicry":
                continue
            if compile_all or c.group in ("timing", "concurrency") or (c.bb_family, c.method) in COMPILED:
                c.compile = "warm" if key in seen else "cold"
                seen.add(key)
    return cases


def not_applicable(case: Case, gpus: int, in_process: bool) -> str | None:
    """Why ``case`` cannot run here, or ``None``."""
    if case.group == "ddp" and gpus < 2:
        return f"needs 2 or more GPUs ({gpus} visible)"
    if case.group == "concurrency" and (gpus < 1 or in_process):
        return "two runs sharing one GPU, each in its own process: measured on a GPU only"
    return None


@dataclass
class Job:
    """Cases run one after another in one process (``together``: each in its own process, all started at once)."""

    cases: list[Case]
    alone: bool = False
    """No other job uses the GPU meanwhile (timed figures, DDP over every GPU, mimicry)."""
    together: bool = False
    in_parent: bool = False
    """Runs in the check's own process (mimicry: not a ``recast-bench run``)."""

    @property
    def name(self) -> str:
        return self.cases[0].name + (f" (+{len(self.cases) - 1})" if len(self.cases) > 1 else "")


def jobs(cases: list[Case], is_avalanche: Callable[[str], bool]) -> list[Job]:
    """Group ``cases`` into processes, in the order they run (the module docstring says what may share one)."""
    groups: dict[tuple[str, bool], list[Case]] = {}
    out: list[Job] = []
    for c in cases:
        if c.group == "default":
            groups.setdefault((c.backbone, is_avalanche(c.method_name)), []).append(c)
    for members in groups.values():
        n = -(-len(members) // CASES_PER_PROCESS)
        out += [Job(members[i::n]) for i in range(n)]  # strided: the compiled cases spread over the processes
    out += [Job([c]) for c in cases if c.group == "determinism"]
    out.sort(key=job_expected_s, reverse=True)  # longest first: the lanes finish together
    out += [Job([c], alone=True) for c in cases if c.group in ("ddp", "timing")]
    pair = [c for c in cases if c.group == "concurrency"]
    if pair:
        out.append(Job(pair, alone=True, together=True))
    out += [Job([c], alone=True, in_parent=True) for c in cases if c.group == "mimicry"]
    return out


# ---- time budget, all MODELLED (no GPU has run this check); the basis of each figure is beside it --------------------
DEADLINE_S = 480.0
"""The whole check, preflight to report: 8 minutes."""
PARENT_S = 30.0
"""Preflight (nvidia-smi, test matmul), writing the data (4.9 s) and building its cache (6.6 s), both measured on the
shared 2-core CPU (CPU work, so no faster on a GPU host), the FLOP count and the throughput ceiling (about 10 s:
3-4 precision modes x 25 steps of ViT-S at batch 128 and ResNet-34 at 64)."""
PROCESS_S = 8.0
"""Python start, importing torch, Lightning, timm, Hydra and the project (13-22 s measured on the shared 2-core CPU
at a load of 5, so about 6-9 s on an idle core), the CUDA context and the test matmul (about 1 s)."""
TASK_S = 2.0
"""Per task: Trainer, persistent train and val loader workers (forked), test loaders' workers per evaluated task,
state files (2.0-2.6 s measured on the loaded 2-core CPU, test evaluation included)."""
EPOCH_S = 0.5
"""Per epoch: iterator reset, validation set-up, model selection's state copy."""
WARMUP_S = {"vit": 2.0, "resnet": 4.0}
"""Per case: first kernels; for ResNets cuDNN autotuning every convolution shape (a few ms each, forward and both
backward passes, 36 convolutions)."""
COMPILE_S = {
    "cold": {"vit": 50.0, "resnet": 60.0},
    "warm": {"vit": 8.0, "resnet": 10.0},
    "off": {"vit": 0.0, "resnet": 0.0},
}
"""Per case: inductor on the training and evaluation graphs of the backbone, cold (a typical small vision model on a
16-core host, kernels compiled in parallel) or from the FX-graph and autograd caches of an earlier case (Dynamo's
tracing remains)."""
MIMIC_S = {"vit_small": 19.0, "vit_base": 51.0, "resnet34": 50.0}
"""The paper's Neural Mimicry: Table 5's RTX8000 times halved for an H100 (ViT-S 37.4 s, ViT-B 102 s; ResNet-34's
3000 iterations at the per-iteration cost of ViT-S's 1000, which this CPU measures at 0.9x: 0.91 vs 1.02 s/iter).
A run's own mimicry is cached, so each backbone's first RECAST run pays it."""
DEFAULT_LANES = 3
"""Shared jobs at once on the GPU (16 CPUs: 5 loader workers each); their cases are mostly fixed costs that overlap."""
LIMIT_FACTOR, LIMIT_MIN_S = 3.0, 60.0


@cache
def compute_s(method: str, backbone: str, epochs: int, compiled: bool) -> float:
    """GPU seconds of one case's training and evaluation on :data:`GPU_TASKS`, from the cost model: the row's counted
    FLOPs (perf/flops.json) at its card's batch, with its strategy's extra passes (perf/work.py), over its backbone
    family's modelled H100 MFU (perf/mfu.py: published throughputs); ``compiled``: the case compiles. Plus the host
    time the GPU waits for (EWC's penalty loop). A backbone the packaged table lacks (the CPU form's tiny ones, which
    have no budget: only the jobs' order reads it) takes its family's bench backbone."""
    from recast_bench.cost import bb_family, gpu_seconds, modelled
    from recast_bench.perf.flops import count_entry, load_table, row_flops
    from recast_bench.perf.work import row_work, settings_of

    if backbone not in load_table()["backbones"]:
        backbone = {"vit": "vit_small", "resnet": "resnet34"}[bb_family(backbone)]
    flops = row_flops(backbone, method) or count_entry(method, backbone)
    full = row_flops(backbone, "full") or count_entry("full", backbone)
    w = row_work(method, list(GPU_TASKS), epochs, flops, full, settings_of(method, backbone))
    return gpu_seconds(w, modelled(bb_family(backbone), compiled)) + w.host_s


def expected_s(case: Case) -> float:
    """Modelled seconds of ``case`` on an H100 in a warm process (process start excluded; see :data:`PROCESS_S`)."""
    if case.group == "mimicry":
        return MIMIC_S.get(case.backbone, MIMIC_S["vit_base"])
    fam = case.bb_family
    compute = compute_s(case.method, case.backbone, case.epochs, case.compile != "off")
    fixed = 2 * TASK_S + 2 * case.epochs * EPOCH_S + WARMUP_S[fam] + COMPILE_S[case.compile][fam]
    return compute + fixed + (MIMIC_S.get(case.backbone, 0.0) if case.mimics else 0.0)


def limit_s(case: Case) -> float:
    """Seconds after which a case is stopped: 3x its modelled time with a cold compile, and with mimicry for a RECAST
    case (it may be the first of its backbone to run it)."""
    worst = replace(
        case, compile="off" if case.compile == "off" else "cold", mimics=case.method_name.startswith("recast")
    )
    return max(LIMIT_MIN_S, LIMIT_FACTOR * expected_s(worst))


def job_expected_s(job: Job) -> float:
    """Modelled wall seconds of ``job``: process start (once, or once per case started together) and its cases."""
    times = [expected_s(c) for c in job.cases]
    if job.in_parent:
        return sum(times)
    return PROCESS_S + (max(times) if job.together else sum(times))


def budget(job_list: list[Job], lanes: int) -> dict[str, float]:
    """The modelled wall time of the check: jobs that share the GPU run ``lanes`` at a time, the others alone."""
    shared = sum(job_expected_s(j) for j in job_list if not j.alone)
    alone = sum(job_expected_s(j) for j in job_list if j.alone)
    out = {"parent_s": PARENT_S, "shared_jobs_s": shared / max(1, lanes), "alone_jobs_s": alone}
    out["total_s"] = sum(out.values())
    return out


FAILURE_CLASSES = (
    ("missing_package", r"No module named|is not installed|pip install"),
    ("cublas_determinism", r"CUBLAS_WORKSPACE_CONFIG"),
    ("nondeterministic_op", r"does not have a deterministic implementation"),
    ("nccl_cpu_tensor", r"No backend type associated with device type cpu|Tensors must be CUDA|NCCL.*cpu|cpu.*NCCL"),
    ("out_of_memory", r"out of memory|OutOfMemoryError"),
    ("shared_memory", r"/dev/shm|shared memory|[Bb]us error|DataLoader worker .* is killed"),
    ("unsupported_gpu_arch", r"no kernel image|not compatible with the current PyTorch|sm_\d+ is not"),
    ("nonfinite_loss", r"non-finite loss"),
    ("device_mismatch", r"same device|device mismatch|evaluated on|Expected .* device"),
    ("avalanche_refuses_ddp", r"runs avalanche on one device"),
    ("timeout", r"timed out|TimeoutExpired"),
)
"""The failure classes of cases.md (plus a missing package), each with the text that identifies it (first match
wins)."""


def classify(text: str) -> str:
    for name, pattern in FAILURE_CLASSES:
        if re.search(pattern, text):
            return name
    return "other"
