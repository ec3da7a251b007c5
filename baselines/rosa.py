"""RoSA (Nikdan et al., ICML 2024): robust adaptation, a low-rank plus a sparse update, on ViT layers.

``y = W x + (alpha / r) B A x + S x`` with ``S`` sparse. Per layer part, the support of ``S`` is the top-k entries
of the squared weight gradient accumulated over a few batches of the task's training data ("mean-squared" gradient
accumulation of IST-DASLab/RoSA / peft-rosa, official code followed), with ``k = max(1, round(density * numel))``;
the values of ``S`` start at zero, ``A`` is kaiming-uniform(a=sqrt 5) and ``B`` zero.

Port: ``S`` is stored truly sparse, as a fixed index buffer (``task_buffers``) and a value vector (the trained
parameter), scattered into the dense ``M * V`` update at forward time, so the per-task count and storage are the
active entries only. The gradient for the mask is taken at the task's start (adapters at zero), w.r.t. the layer's
effective weight, with a seeded temporary linear head on the task's labels (the engine adds the task head after
``on_task_start``); the original's optional LoRA-only warm-up before mask collection is not ported.

Variants (``variant``), both from the RECAST paper (section 3, Table 2):

* ``sparse_mlp``: no LoRA, sparse on fc1 and fc2 at density 1e-5 (the paper's 0.001%): on ViT-S each 1536x384 layer
  keeps round(5.9) = 6 entries, 24 layers -> 144 active parameters (< 150, as the paper requires);
* ``full`` ("Full - Att."): rank-1 LoRA plus sparse on q, k, v and proj. The density 0.0162 is our estimate from
  Table 2's "7e-3 P" budget (about 152k on ViT-S: 36,864 LoRA + 114,672 sparse); the paper does not state it;
* ``custom``: set ``lora_targets``, ``sparse_targets`` and ``density`` yourself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines._vit import (
    RowAdaptedLinear,
    check_low_rank,
    check_targets,
    modules_of,
    task_generator,
    vit_blocks,
    work_device,
    wrap_targets,
)
from baselines.lora import LoRAFactors
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel

VARIANTS: dict[str, dict[str, Any]] = {
    "sparse_mlp": {"lora_targets": [], "sparse_targets": ["fc1", "fc2"], "density": 1e-5},
    "full": {"lora_targets": ["q", "k", "v", "proj"], "sparse_targets": ["q", "k", "v", "proj"], "density": 0.0162},
}


def probe_head(num_features: int, num_classes: int, seed: int) -> nn.Linear:
    """The temporary head giving the task loss for mask selection: nn.Linear's init range, seeded, zero bias."""
    head = nn.Linear(num_features, num_classes)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-1, 1, generator=g) / num_features**0.5)
        head.bias.zero_()
    return head


class SparseDelta(nn.Module):
    """``k`` trainable values at fixed flat positions of a ``rows x cols`` matrix (zero elsewhere)."""

    def __init__(self, rows: int, cols: int, density: float) -> None:
        super().__init__()
        self.shape = (rows, cols)
        k = max(1, round(density * rows * cols))
        self.values = nn.Parameter(torch.zeros(k))
        self.register_buffer("index", torch.arange(k, dtype=torch.long))

    def dense(self) -> torch.Tensor:
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=self.values.dtype, device=self.values.device)
        return flat.scatter(0, self.index, self.values).view(self.shape)

    def select(self, score: torch.Tensor) -> None:
        """Keep the top-k entries of ``score`` (sorted positions, so the state is canonical); values back to zero."""
        idx = torch.topk(score.flatten(), self.values.numel()).indices.sort().values
        with torch.no_grad():
            self.index.copy_(idx.to(self.index.device))
            self.values.zero_()


class RosaLinear(RowAdaptedLinear):
    """``W'[rows(p)] = W[rows(p)] + s B_p A_p + S_p``; parts may have LoRA, a sparse delta, or both."""

    def __init__(
        self,
        base: nn.Module,
        parts: dict[str, tuple[int, int]],
        lora_parts: list[str],
        sparse_parts: list[str],
        rank: int,
        scale: float,
        density: float,
    ) -> None:
        super().__init__(base, parts)
        self.scale = float(scale)
        self.lora = nn.ModuleDict(
            {p: LoRAFactors(rank, self.in_features, b - a) for p, (a, b) in self.parts.items() if p in lora_parts}
        )
        self.sparse = nn.ModuleDict(
            {p: SparseDelta(b - a, self.in_features, density) for p, (a, b) in self.parts.items() if p in sparse_parts}
        )
        self.probe: dict[str, torch.Tensor] | None = None
        """Dense zero tensors added during mask selection: their gradient is the effective weight's gradient."""

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        out = rows
        if part in self.lora:
            out = out + self.lora[part].delta(self.scale).to(rows.dtype)
        if part in self.sparse:
            out = out + self.sparse[part].dense().to(rows.dtype)
        if self.probe is not None and part in self.probe:
            out = out + self.probe[part]
        return out


@dataclass
class RosaConfig(MethodConfig):
    """RoSA settings; ``variant`` fills any of lora_targets/sparse_targets/density left null."""

    variant: str = "sparse_mlp"
    """sparse_mlp | full | custom (RECAST paper Table 2 evaluates the first two)."""
    rank: int = 1
    """RECAST paper section 3: LoRA rank 1."""
    alpha: float = 1.0
    """Scale alpha / r (alpha = r: unscaled)."""
    lora_targets: list[str] | None = None
    sparse_targets: list[str] | None = None
    density: float | None = None
    """Fraction of each sparse part's entries that train (top-k by accumulated squared gradient)."""
    grad_batches: int = 4
    """Training batches whose squared gradients are accumulated to choose the sparse support."""
    probe_seed: int = 0
    """Seed of the temporary head used for the mask gradient."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in (*VARIANTS, "custom"):
            raise ValueError(f"rosa variant must be one of {', '.join(VARIANTS)}, custom; got {self.variant!r}")
        preset = VARIANTS.get(self.variant, {})
        for key in ("lora_targets", "sparse_targets", "density"):
            if getattr(self, key) is None:
                if key not in preset:
                    raise ValueError(f"rosa variant custom needs {key} set")
                setattr(self, key, preset[key])
        self.lora_targets, self.sparse_targets = list(self.lora_targets), list(self.sparse_targets)
        check_targets(self.lora_targets, "lora_targets", allow_empty=True)
        check_targets(self.sparse_targets, "sparse_targets", allow_empty=True)
        if not self.lora_targets and not self.sparse_targets:
            raise ValueError("rosa needs lora_targets or sparse_targets (both are empty)")
        check_low_rank(self.rank, self.alpha)
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.grad_batches < 1:
            raise ValueError(f"grad_batches must be >= 1, got {self.grad_batches}")


@METHODS.register("rosa")
class Rosa(Method):
    """Low-rank plus gradient-chosen sparse updates (see module docstring)."""

    name: ClassVar[str] = "rosa"
    Config: ClassVar[type[MethodConfig]] = RosaConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg: RosaConfig = self.cfg  # type: ignore[assignment]
        vit_blocks(model.backbone)
        device = next(model.backbone.parameters()).device
        targets = [t for t in ("q", "k", "v", "proj", "fc1", "fc2") if t in cfg.lora_targets + cfg.sparse_targets]

        def make(name: str, base: nn.Module, parts: dict[str, tuple[int, int]]) -> RosaLinear:
            scale = cfg.alpha / cfg.rank
            return RosaLinear(base, parts, cfg.lora_targets, cfg.sparse_targets, cfg.rank, scale, cfg.density)

        wrap_targets(model.backbone, targets, make)
        model.backbone.to(device)

    def _layers(self, model: TaskModel) -> dict[str, RosaLinear]:
        return modules_of(model, RosaLinear)

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        out = {}
        for n, layer in self._layers(model).items():
            for p, f in layer.lora.items():
                out[f"{n}.lora.{p}.A"], out[f"{n}.lora.{p}.B"] = f.A, f.B
            for p, s in layer.sparse.items():
                out[f"{n}.sparse.{p}.values"] = s.values
        return out

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return {
            f"{n}.sparse.{p}.index": s.index
            for n, layer in self._layers(model).items()
            for p, s in layer.sparse.items()
        }

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        layers = self._layers(model)
        for i, layer in enumerate(layers.values()):
            g = task_generator(self.ctx.seed, task_index, i)
            for f in layer.lora.values():
                f.reset(g)
            for s in layer.sparse.values():
                with torch.no_grad():
                    s.values.zero_()
        if any(layer.sparse for layer in layers.values()):
            self._select_support(model, layers, task, train_loader)

    def _select_support(self, model: TaskModel, layers: dict[str, RosaLinear], task: Task, loader: DataLoader) -> None:
        """Top-k of the squared effective-weight gradients accumulated over ``grad_batches`` training batches."""
        cfg: RosaConfig = self.cfg  # type: ignore[assignment]
        device = work_device(model, self.ctx.device)
        probes: dict[tuple[str, str], torch.Tensor] = {}
        for n, layer in layers.items():
            layer.probe = {}
            for p, s in layer.sparse.items():
                layer.probe[p] = probes[(n, p)] = torch.zeros(s.shape, device=device, requires_grad=True)
        head = probe_head(int(model.num_features), int(task.num_classes), cfg.probe_seed).to(device)
        acc = {k: torch.zeros_like(v) for k, v in probes.items()}
        was_training = model.training
        model.eval()  # no dropout: the support depends on data and seed only
        batches = 0
        try:
            for x, y in loader:
                if batches >= cfg.grad_batches:
                    break
                loss = F.cross_entropy(head(model.backbone(x.to(device))), y.to(device))
                grads = torch.autograd.grad(loss, list(probes.values()))
                for k, gr in zip(probes, grads):
                    acc[k] += gr.detach() ** 2
                batches += 1
        finally:
            for layer in layers.values():
                layer.probe = None
            model.train(was_training)
        if batches == 0:
            raise UserError(f"task {task.name!r} has no training batch to choose RoSA's sparse support from")
        for (n, p), score in acc.items():
            layers[n].sparse[p].select(score / batches)
