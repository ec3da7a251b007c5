"""Shared helpers of the ViT adapter baselines: target lookup by module role and a row-adapting Linear wrapper.

Targets are named by role, as in the papers: ``q``, ``k``, ``v`` (row slices of timm's fused ``blocks.N.attn.qkv``),
``proj`` (``blocks.N.attn.proj``), ``fc1`` and ``fc2`` (``blocks.N.mlp.fc1/fc2``). Layers are found by these names,
never by type, and any "linear-like" module is accepted (``nn.Linear`` or RECAST's generated-weight
``ReparamLinear``): the wrapper reads ``base.weight`` and ``base.bias`` at every forward and never caches them, which
is what makes ``recast+X`` work (X adapts whatever weight RECAST generates for the current coefficients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.engine.fold import Foldable
from recast_bench.errors import UserError

QKV_PARTS = ("q", "k", "v")
FULL_PARTS = ("proj", "fc1", "fc2")
TARGETS = QKV_PARTS + FULL_PARTS
_LAYER_OF = {"q": "attn.qkv", "k": "attn.qkv", "v": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def check_low_rank(rank: int, alpha: float | None = None) -> None:
    """Config validation shared by the LoRA family: rank >= 1 and a positive alpha (when the method has one)."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")


def check_targets(targets: Sequence[str], what: str = "targets", allow_empty: bool = False) -> None:
    """Raise ``ValueError`` (config validation) unless ``targets`` is a non-empty list of known roles."""
    if not targets and not allow_empty:
        raise ValueError(f"{what} must list at least one of {', '.join(TARGETS)}")
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"{what} has unknown entries {bad}; choose from {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"{what} lists an entry twice: {list(targets)}")


def is_linear_like(m: nn.Module) -> bool:
    """nn.Linear or anything exposing a 2-d ``weight`` with ``in_features``/``out_features`` (ReparamLinear)."""
    if isinstance(m, nn.Linear):
        return True
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and hasattr(m, "in_features") and hasattr(m, "out_features")


def vit_blocks(backbone: nn.Module) -> nn.Sequential:
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise UserError("this method needs a timm VisionTransformer backbone (with .blocks); use a vit_* backbone")
    return blocks


def get_module(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def target_layers(backbone: nn.Module, targets: Sequence[str]) -> dict[str, list[str]]:
    """``{"blocks.N.attn.qkv": ["q", "v"], "blocks.N.mlp.fc1": ["fc1"], ...}`` in block order (backbone-relative)."""
    out: dict[str, list[str]] = {}
    for i, _ in enumerate(vit_blocks(backbone)):
        for part in TARGETS:  # fixed role order, so q < k < v inside a qkv layer
            if part in targets:
                out.setdefault(f"blocks.{i}.{_LAYER_OF[part]}", []).append(part)
    for name in out:
        m = get_module(backbone, name)
        if not is_linear_like(m):
            raise UserError(f"{name} is a {type(m).__name__}, not a Linear layer; cannot adapt it")
    return out


def part_rows(part: str, out_features: int) -> tuple[int, int]:
    """Output rows of ``part`` in its layer: a third of the fused qkv for q/k/v, every row otherwise."""
    if part in QKV_PARTS:
        if out_features % 3:
            raise UserError(f"fused qkv with {out_features} outputs is not divisible into q, k, v")
        d = out_features // 3
        i = QKV_PARTS.index(part)
        return i * d, (i + 1) * d
    return 0, out_features


def kaiming_a_sqrt5_(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """LoRA's A init (nn.Linear's default): kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    with torch.no_grad():
        return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)


def task_generator(seed: int, task_index: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for per-task re-initialisation: same seed and task, same init, whatever ran before."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(task_index) * 1009 + int(salt))


class RowAdaptedLinear(Foldable, nn.Module):
    """``y = x W'^T + b`` where ``W'`` replaces the rows of selected parts of ``base.weight``.

    ``parts`` maps a role (``q``, ``fc1``, ... or ``all`` for a plain layer) to its ``(start, stop)`` output rows.
    Subclasses implement the same adaptation twice:

    * :meth:`adapt_output` (the forward pass, unmerged): the output from ``x`` and the base layer's own output
      ``x W^T + b``, e.g. plus the parts' low-rank paths ``s (x A^T) B^T`` on their rows (:meth:`rows_to_full`).
      The base GEMM never sees the adapter, so (a) no full ``out x in`` weight gradient is formed for a frozen base
      weight (only the adapter's small ones), and (b) under bf16 autocast the adapter's delta is not rounded into
      ``W`` first (a merged ``W + dW`` cast to bf16 drops every entry of ``dW`` below about ``2^-9 |W|``);
    * :meth:`adapt_rows` (the merged weight, for export and for ``weight``): the adapted weight rows.

    The two agree to float32 rounding (tests/test_unmerged_adapters.py). Rows of no part stay exactly the base
    layer's (K of a Q/V adapter). Under ``torch.compile`` every subclass traces without a graph break (RoSA's
    gathered sparse path included; its support probe exists only during the uncompiled warm-up). The base layer's
    weight and bias are read at each forward (no copy), so a generated weight (``recast+X``) is always current.
    """

    def __init__(self, base: nn.Module, parts: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        if not is_linear_like(base):
            raise TypeError(f"expected a Linear-like layer, got {type(base).__name__}")
        self.base = base
        self.parts = dict(sorted(parts.items(), key=lambda kv: kv[1][0]))
        spans = list(self.parts.values())
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise ValueError(f"overlapping parts {self.parts}")

    @property
    def in_features(self) -> int:
        return int(self.base.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The adapted (merged) weight, so that a wrapper can itself be treated as a Linear-like layer."""
        return self.effective_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def adapt_rows(self, part: str, rows: torch.Tensor) -> torch.Tensor:
        """Return the adapted weight rows of ``part`` given the base rows (``[stop - start, in_features]``)."""
        raise NotImplementedError

    def adapt_output(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The layer's output given its input ``x``, the base output ``y = x w^T + b`` (every row) and the base
        weight ``w`` (for methods that need it, e.g. DoRA's norm); same dtype as ``y``."""
        raise NotImplementedError

    def rows_to_full(self, parts: dict[str, torch.Tensor], fill: float = 0.0) -> torch.Tensor:
        """Per-part tensors (last dimension: the part's rows) as one ``[..., out_features]`` tensor, ``fill`` on the
        rows of no part.

        Adapters add (or scale) the base output with one full-width op instead of slicing it per part: a slice of
        ``y`` costs a zero-filled full-size gradient per part in the backward pass, the concatenation here only views.
        """
        ref = next(iter(parts.values()))
        chunks = [parts[part] if part is not None else ref.new_full((*ref.shape[:-1], stop - start), fill)
                  for part, start, stop in self._spans()]  # fmt: skip
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, -1)

    def effective_weight(self) -> torch.Tensor:
        """The merged weight: the base rows, each part's rows replaced by :meth:`adapt_rows`."""
        w = self.base.weight
        chunks = [w[start:stop] if part is None else self.adapt_rows(part, w[start:stop])
                  for part, start, stop in self._spans()]  # fmt: skip
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, 0)

    def _spans(self) -> list[tuple[str | None, int, int]]:
        """The output rows in order as ``(part, start, stop)``, ``part`` ``None`` for rows of no part."""
        spans, cursor = [], 0
        for part, (start, stop) in self.parts.items():
            if start > cursor:
                spans.append((None, cursor, start))
            spans.append((part, start, stop))
            cursor = stop
        if cursor < self.out_features:
            spans.append((None, cursor, self.out_features))
        return spans

    def merged_weight(self) -> torch.Tensor:
        return self.effective_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base.weight  # read once: a generated weight is built once per forward
        return self.adapt_output(x, F.linear(x, w, self.base.bias), w)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, parts={list(self.parts)}"


def low_rank_output(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * (x a^T) b^T``: the low-rank path of the LoRA family, never forming ``b a`` (``out x in``)."""
    out = F.linear(F.linear(x, a), b)
    return out if scale == 1.0 else out * scale


def wrap_targets(backbone: nn.Module, targets: Sequence[str], make: callable) -> dict[str, RowAdaptedLinear]:
    """Replace each target layer by ``make(name, base, parts)``; returns ``{backbone-relative name: wrapper}``."""
    wrapped = {}
    for name, roles in target_layers(backbone, targets).items():
        base = get_module(backbone, name)
        if isinstance(base, RowAdaptedLinear):
            raise UserError(f"{name} is already adapted; apply one ViT adapter per layer")
        parts = {r: part_rows(r, int(base.out_features)) for r in roles}
        wrapper = make(name, base, parts)
        set_module(backbone, name, wrapper)
        wrapped[name] = wrapper
    return wrapped


def modules_of(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    """Every registered module of type ``cls`` by qualified name (walked each time: names follow any rewrapping)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


def work_device(model: nn.Module, ctx_device: str) -> torch.device:
    """Device for data-driven initialisation at task start: the run's device when usable (Lightning moves the
    model there for training anyway), else wherever the model already is."""
    if ctx_device.startswith("cuda") and torch.cuda.is_available():
        model.to(ctx_device)
    return next(model.parameters()).device
