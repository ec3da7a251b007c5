"""The cases of the GPU check (after ``shared/gpu/cases.md``) and the classification of a failure's text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

VIT_METHODS = (
    "linear", "recast", "recast+adaptformer", "melo", "dora", "rosa@sparse_mlp", "rosa@full", "recast+rosa@sparse_mlp",
    "inflora", "l2p",
)  # fmt: skip
RESNET_METHODS = (
    "recast", "piggyback", "recast+piggyback", "hat", "clr", "recast+clr", "ewc", "lwf", "gdumb", "er-ace", "derpp",
)  # fmt: skip
AVALANCHE = {"ewc", "lwf", "gdumb", "er-ace", "derpp", "l2p"}


@dataclass
class Case:
    group: str
    """``default``, ``determinism``, ``eval-device``, ``ddp`` or ``mimicry``."""
    backbone: str
    method: str
    """A bench entry: NAME or NAME@VARIANT (RoSA's two rows)."""
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.group}/{self.backbone}/{self.method}"

    @property
    def method_name(self) -> str:
        return self.method.split("@", 1)[0]

    def variant_overrides(self) -> list[str]:
        if "@" not in self.method:
            return []
        adapter = self.method_name.split("+")[-1]
        return [f"method.{adapter}.variant={self.method.split('@', 1)[1]}"]


def plan(gpus: int, tiny: bool) -> list[Case]:
    """Every case; ``tiny``: the CPU form's backbones (same methods), ``gpus``: DDP cases need two or more."""
    vit, resnet = ("vit_tiny", "resnet_tiny") if tiny else ("vit_small", "resnet34")
    cases = [Case("default", vit, m) for m in VIT_METHODS]
    cases += [Case("default", resnet, m) for m in RESNET_METHODS]
    # cuBLAS determinism: RoSA and InfLoRA do GEMMs in on_task_start, before the first Trainer exists.
    cases += [Case("determinism", vit, m, ["trainer.deterministic=true"]) for m in ("rosa@sparse_mlp", "inflora")]
    cases.append(Case("eval-device", vit, "recast"))
    if gpus >= 2:
        ddp = [f"trainer.devices={gpus}", "trainer.strategy=ddp"]
        cases += [Case("ddp", vit, m, list(ddp)) for m in ("linear", "recast")]
    cases += [Case("mimicry", b, "recast") for b in ((vit,) if tiny else ("vit_small", "vit_base"))]
    return cases


FAILURE_CLASSES = (
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
"""The failure classes of cases.md, each with the text that identifies it (first match wins)."""


def classify(text: str) -> str:
    for name, pattern in FAILURE_CLASSES:
        if re.search(pattern, text):
            return name
    return "other"
