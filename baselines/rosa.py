"""RoSA (Nikdan et al., ICML 2024): robust adaptation, a low-rank plus a sparse update, on ViT layers.

``y = W x + (alpha / r) B A x + S x`` with ``S`` sparse. Official code followed: IST-DASLab/RoSA and peft-rosa
(``tuners/rosa/scheduler.py``, the legacy ``scripts/train`` restart pipeline); ours is written independently.

Per task, as the official ``wl64`` schedule with its restart (legacy yamls: "trains lora and spa the whole time,
which means it restarts the training after grad collection"):

1. **LoRA warm-up**: ``warmup_steps`` (official 64) AdamW steps of the LoRA factors on the task's real loss, through
   the task's real head (a fresh ``num_features -> num_classes`` head registered as the task's head, trained along).
2. **Support**: the squared gradient of each sparse part's effective weight, accumulated over ``grad_batches``
   batches (official ``spa_num_grads`` 1, ``grad_acc_mode`` mean_squared), with the warmed-up LoRA in place; keep
   the top ``int(density * numel)`` entries (official ``_grad_to_mask_fn``: a floor, not a rounding).
3. **Restart**: LoRA back to its fresh init (A kaiming-uniform(a=sqrt 5), B zero), the sparse values to zero; the
   engine then attaches a fresh head and trains LoRA, sparse values and head from there.

Variants without LoRA (sparse-MLP) warm up the head alone before the gradient is taken (ours, flagged: the
official ``spa_only`` schedule collects the gradient at step 0, where an LLM's output layer is already trained;
our task head is new, so its gradient at step 0 would pick the support through a random classifier).

A fused ``qkv`` whose Q, K and V are all targets is one module, as in the official code (it adapts whole
``nn.Linear`` modules): one LoRA pair ``A`` (r x d), ``B`` (3d x r) and one top-k over all ``3d x d`` entries.
Targeting only some of q, k, v adapts those row slices (ours).

Port: ``S`` is stored truly sparse, as a fixed index buffer (``task_buffers``) and a value vector (the trained
parameter), scattered into the dense update at forward time, so the per-task count and storage are the active
entries only. Optimiser: AdamW with separate learning rates for the low-rank and the sparse parts (official
``lora_lr`` / ``lr``); see :class:`RosaConfig` for the values and their sources.

Variants (``variant``), both from the RECAST paper (section 3, Table 2):

* ``sparse_mlp``: no LoRA, sparse on fc1 and fc2 at density 1e-5 (the paper's 0.001%): on ViT-S each 1536x384 layer
  keeps int(5.9) = 5 entries, 24 layers -> 120 active parameters (< 150, as the paper requires);
* ``full`` ("Full - Att."): rank-1 LoRA plus sparse on the fused qkv and proj. The density 0.0179 is fitted to
  Table 2's "7e-3 P" budget (ViT-S: 27,648 LoRA + 126,684 sparse = 154,332 = 7.0e-3 P); the paper states neither
  the targets beyond "LoRA-based attention" nor the density (flagged: fitted to the table);
* ``custom``: set ``lora_targets``, ``sparse_targets`` and ``density`` yourself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler

from baselines._vit import (
    QKV_PARTS,
    RowAdaptedLinear,
    check_low_rank,
    check_targets,
    low_rank_output,
    modules_of,
    task_generator,
    vit_blocks,
    work_device,
    wrap_targets,
)
from baselines.lora import LoRAFactors
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.engine.model import head_key
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel

VARIANTS: dict[str, dict[str, Any]] = {
    "sparse_mlp": {"lora_targets": [], "sparse_targets": ["fc1", "fc2"], "density": 1e-5},
    "full": {"lora_targets": ["q", "k", "v", "proj"], "sparse_targets": ["q", "k", "v", "proj"], "density": 0.0179},
}
FUSED = "qkv"
"""Part name of a fused qkv adapted as one module (all of q, k, v targeted)."""


def sparse_count(density: float, numel: int) -> int:
    """Active entries of a sparse part: ``int(density * numel)``, the official floor (peft-rosa _grad_to_mask_fn)."""
    return int(density * numel)


def seeded_head(num_features: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A task head with nn.Linear's default init ranges, drawn from ``generator`` (the global RNG is left alone)."""
    head = nn.utils.skip_init(nn.Linear, num_features, num_classes)
    bound = 1.0 / num_features**0.5
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))
    return head


class SparseDelta(nn.Module):
    """``k`` trainable values at fixed flat positions of a ``rows x cols`` matrix (zero elsewhere)."""

    def __init__(self, rows: int, cols: int, density: float) -> None:
        super().__init__()
        self.shape = (rows, cols)
        k = sparse_count(density, rows * cols)
        self.values = nn.Parameter(torch.zeros(k))
        self.register_buffer("index", torch.arange(k, dtype=torch.long))

    def dense(self) -> torch.Tensor:
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=self.values.dtype, device=self.values.device)
        return flat.scatter(0, self.index, self.values).view(self.shape)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """``x S^T`` (``[..., rows]``), its own path beside the base GEMM.

        At most ``cols`` active entries (the sparse-MLP variant: 5 of 589,824): gathered, ``out[r] += v * x[c]``, so
        the work and the saved activations are ``k`` per token, never a dense ``rows x cols`` product or weight
        gradient. Denser supports (the full variant, 1.79 %) would gather more than the layer's whole input per
        token: they use the dense masked ``S`` in a GEMM of their own (ours, flagged: the switch is where the
        gathered activations would outgrow ``x``; the official spops kernels are CUDA-only sparse GEMMs).
        """
        rows, cols = self.shape
        if self.values.numel() > cols:
            return F.linear(x, self.dense().to(x.dtype))
        picked = x.index_select(-1, self.index % cols) * self.values.to(x.dtype)
        out_rows = torch.div(self.index, cols, rounding_mode="floor")
        return x.new_zeros(*x.shape[:-1], rows).index_add(-1, out_rows, picked)

    def select(self, score: torch.Tensor) -> None:
        """Keep the top-k entries of ``score`` (sorted positions, so the state is canonical); values back to zero."""
        idx = torch.topk(score.flatten(), self.values.numel()).indices.sort().values
        with torch.no_grad():
            self.index.copy_(idx.to(self.index.device))
            self.values.zero_()


class RosaLinear(RowAdaptedLinear):
    """``W'[rows(p)] = W[rows(p)] + s B_p A_p + S_p``; parts may have LoRA, a sparse delta, or both.

    Forward unmerged, each term its own path: ``y_p = x W_p^T + b_p + s (x A_p^T) B_p^T + x S_p^T``.
    """

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
        """Dense zero tensors added during support selection: their gradient is the effective weight's gradient."""

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        out = rows
        if part in self.lora:
            out = out + self.lora[part].delta(self.scale).to(rows.dtype)
        if part in self.sparse:
            out = out + self.sparse[part].dense().to(rows.dtype)
        if self.probe is not None and part in self.probe:
            out = out + self.probe[part]
        return out

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return y + self.rows_to_full({p: self.part_delta(p, x).to(y.dtype) for p in self.parts})

    def part_delta(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """``s (x A^T) B^T + x S^T`` of one part (each term its own path), plus the support probe's ``x P^T``."""
        terms = []
        if part in self.lora:
            terms.append(low_rank_output(x, *self.lora[part].factors(), self.scale))
        if part in self.sparse:
            terms.append(self.sparse[part].output(x))
        if self.probe is not None and part in self.probe:  # d loss / d probe = the adapted weight's gradient
            terms.append(F.linear(x, self.probe[part].to(x.dtype)))
        if not terms:  # a part with neither (not built by the method): no change
            start, stop = self.parts[part]
            return x.new_zeros(*x.shape[:-1], stop - start)
        out = terms[0]
        for t in terms[1:]:
            out = out + t.to(out.dtype)
        return out


def fuse_qkv(parts: dict[str, tuple[int, int]], lora: list[str], sparse: list[str]) -> tuple[dict, list, list]:
    """Merge q, k, v into one ``qkv`` part when each adapter targets all three or none of them (official: one module).

    Returns the parts and the lora / sparse part lists to build the layer with.
    """
    qkv = set(QKV_PARTS)
    uniform = all(qkv <= set(t) or not qkv & set(t) for t in (lora, sparse))
    if not (qkv <= set(parts) and uniform):
        return parts, lora, sparse
    fused = {p: r for p, r in parts.items() if p not in qkv}
    fused[FUSED] = (min(parts[p][0] for p in qkv), max(parts[p][1] for p in qkv))
    lora = [p for p in lora if p not in qkv] + ([FUSED] if qkv <= set(lora) else [])
    sparse = [p for p in sparse if p not in qkv] + ([FUSED] if qkv <= set(sparse) else [])
    return fused, lora, sparse


@dataclass
class RosaConfig(MethodConfig):
    """RoSA settings; ``variant`` fills any of lora_targets/sparse_targets/density left null."""

    variant: str = "sparse_mlp"
    """sparse_mlp | full | custom (RECAST paper Table 2 evaluates the first two)."""
    rank: int = 1
    """RECAST paper section 3: "LoRA methods used rank=1"."""
    alpha: float = 16.0
    """Scale alpha / r. Official: lora_alpha 16 (legacy yamls, llama3 example; peft-rosa scales alpha / r). The
    official runs pair it with r=16 (scale 1); with the paper's r=1 the scale is 16. Paper: unstated."""
    lora_targets: list[str] | None = None
    """Null: from the variant (sparse_mlp: none; full: q, k, v, proj, the fused qkv as one module)."""
    sparse_targets: list[str] | None = None
    """Null: from the variant (sparse_mlp: fc1, fc2; full: q, k, v, proj)."""
    density: float | None = None
    """Fraction of each sparse part's entries that train (top ``int(density * numel)`` by squared gradient)."""
    lora_lr: float | None = None
    """Learning rate of the LoRA factors; null: ``lr``. Paper section 3: AdamW 2e-3 to 5e-3 for RoSA (one lr, taken
    for both parts). Official (restart scripts): LORA_LR 7e-4 with LR 2e-4 for the sparse part."""
    sparse_lr: float | None = None
    """Learning rate of the sparse values; null: ``lr`` (paper). Official: 2e-4 (LR in the restart scripts)."""
    warmup_steps: int = 64
    """LoRA warm-up steps before the support is chosen: official schedule ``wl64``."""
    grad_batches: int = 1
    """Batches whose squared gradients choose the support: official ``spa_num_grads`` 1."""
    head_seed: int = 0
    """Salt of the seeded init of the warm-up head."""

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
        for key in ("lora_lr", "sparse_lr"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0 or null, got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_batches < 1:
            raise ValueError(f"grad_batches must be >= 1, got {self.grad_batches}")


@METHODS.register("rosa")
class Rosa(Method[RosaConfig]):
    """Low-rank plus gradient-chosen sparse updates (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = RosaConfig
    families: ClassVar[tuple[str, ...]] = ("vit",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        vit_blocks(model.backbone)
        device = next(model.backbone.parameters()).device
        targets = [t for t in ("q", "k", "v", "proj", "fc1", "fc2") if t in cfg.lora_targets + cfg.sparse_targets]

        def make(name: str, base: nn.Module, parts: dict[str, tuple[int, int]]) -> RosaLinear:
            parts, lora, sparse = fuse_qkv(parts, cfg.lora_targets, cfg.sparse_targets)
            return RosaLinear(base, parts, lora, sparse, cfg.rank, cfg.alpha / cfg.rank, cfg.density)

        wrap_targets(model.backbone, targets, make)
        model.backbone.to(device)

    def _layers(self, model: TaskModel) -> dict[str, RosaLinear]:
        return modules_of(model, RosaLinear)

    def _lora_params(self, model: TaskModel) -> dict[str, nn.Parameter]:
        out = {}
        for n, layer in self._layers(model).items():
            for p, f in layer.lora.items():
                out[f"{n}.lora.{p}.A"], out[f"{n}.lora.{p}.B"] = f.A, f.B
        return out

    def _sparse_params(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {
            f"{n}.sparse.{p}.values": s.values
            for n, layer in self._layers(model).items()
            for p, s in layer.sparse.items()
        }

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {**self._lora_params(model), **self._sparse_params(model)}

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return {
            f"{n}.sparse.{p}.index": s.index
            for n, layer in self._layers(model).items()
            for p, s in layer.sparse.items()
        }

    def param_hparams(self, model: TaskModel) -> dict[str, tuple[float, float]]:
        """Separate learning rates for the low-rank and the sparse parts (official ``lora_lr`` and ``lr``)."""
        cfg = self.cfg
        out = {n: (cfg.lora_lr or cfg.lr, cfg.weight_decay) for n in self._lora_params(model)}
        out.update({n: (cfg.sparse_lr or cfg.lr, cfg.weight_decay) for n in self._sparse_params(model)})
        return out

    def _restart(self, layers: dict[str, RosaLinear], task_index: int) -> None:
        """Fresh LoRA (seeded by run seed, task and layer: the same init before and after the warm-up), zero S."""
        for i, layer in enumerate(layers.values()):
            g = task_generator(self.ctx.seed, task_index, i)
            for f in layer.lora.values():
                f.reset(g)
            with torch.no_grad():
                for s in layer.sparse.values():
                    s.values.zero_()

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        layers = self._layers(model)
        self._restart(layers, task_index)
        if not any(layer.sparse for layer in layers.values()):
            return  # LoRA only: nothing to choose
        scores = self._warm_up_and_collect(model, layers, task_index, task, train_loader)
        for (n, p), score in scores.items():
            layers[n].sparse[p].select(score)
        self._restart(layers, task_index)

    def _warm_up_and_collect(
        self, model: TaskModel, layers: dict[str, RosaLinear], task_index: int, task: Task, loader: DataLoader
    ) -> dict[tuple[str, str], torch.Tensor]:
        """Steps 1 and 2 of the module docstring; returns the accumulated squared gradient of each sparse part."""
        cfg = self.cfg
        device = work_device(model, self.ctx.device)
        gen = task_generator(self.ctx.seed, task_index, 7919 + cfg.head_seed)
        head = seeded_head(int(model.num_features), int(task.num_classes), gen).to(device)
        model.heads[head_key(task_index)] = head  # the task's head (the engine attaches a fresh one afterwards)
        lora = list(self._lora_params(model).values())
        groups = [{"params": list(head.parameters()), "lr": cfg.head_lr or cfg.lr}]
        if lora:
            groups.append({"params": lora, "lr": cfg.lora_lr or cfg.lr})
        trained = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        batches = _cycle(loader, task)
        was_training = model.training
        model.requires_grad_(False)  # only the explicit inputs below get gradients (the engine re-freezes after us)
        for p in trained:
            p.requires_grad_(True)
        model.train()
        probes: dict[tuple[str, str], torch.Tensor] = {}

        def next_loss() -> torch.Tensor:
            x, y = next(batches)
            return F.cross_entropy(head(model.backbone(x.to(device))), y.to(device))

        try:
            for _ in range(cfg.warmup_steps):
                loss = next_loss()
                for p, g in zip(trained, torch.autograd.grad(loss, trained), strict=True):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
            for n, layer in layers.items():
                layer.probe = {}
                for p, s in layer.sparse.items():
                    layer.probe[p] = probes[(n, p)] = torch.zeros(s.shape, device=device, requires_grad=True)
            acc = {k: torch.zeros_like(v) for k, v in probes.items()}
            for _ in range(cfg.grad_batches):
                loss = next_loss()
                for k, g in zip(probes, torch.autograd.grad(loss, list(probes.values())), strict=True):
                    acc[k] += g.detach() ** 2
        finally:
            batches.close()  # ends the loader's iterator now: its workers stop here, not at garbage collection
            for layer in layers.values():
                layer.probe = None
            for p in trained:
                p.requires_grad_(False)
                p.grad = None
            model.train(was_training)
        return {k: v / cfg.grad_batches for k, v in acc.items()}


class _Passes(Sampler[list[int]]):
    """The batches of ``batch_sampler``, pass after pass, without end (stops only if a pass is empty)."""

    def __init__(self, batch_sampler: Sampler[list[int]]) -> None:
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            empty = True
            for batch in self.batch_sampler:
                empty = False
                yield batch
            if empty:
                return


def endless(loader: DataLoader) -> DataLoader | None:
    """``loader``'s dataset, batches and worker settings as one endless pass, or ``None`` if it has no batch sampler.

    The engine hands ``on_task_start`` a non-persistent loader, and every new pass over such a loader starts its
    worker processes again (re-importing the dataset, re-opening memory maps): the warm-up's 64 steps are several
    passes on small tasks. One iterator over every pass starts the workers once. Each pass draws its order from the
    loader's own generator and sampler, so the first pass is the same as the loader's.
    """
    if loader.batch_sampler is None or isinstance(loader.dataset, IterableDataset):
        return None
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_sampler=_Passes(loader.batch_sampler),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        pin_memory_device=loader.pin_memory_device,
    )


def _cycle(loader: DataLoader, task: Task) -> Iterator:
    """Batches of ``loader`` without end, through one iterator (:func:`endless`); refuses an empty loader with one
    clear line."""
    passes = endless(loader)
    while True:
        seen = False
        for batch in passes if passes is not None else loader:
            seen = True
            yield batch
        if not seen:
            raise UserError(f"task {task.name!r} has no training batch to choose RoSA's sparse support from")
