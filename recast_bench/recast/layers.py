"""RECAST template banks and generated-weight layers (paper section 2.1, Eq. 1-2; appendix A.4.1).

A layer's weight is not stored: it is generated as ``W = (1/K) sum_k sum_i C[k, i] T[i]`` from a template bank
``T`` of shape ``(n, *weight_shape)`` shared by the layers of a group and the layer's own coefficients ``C`` of shape
``(K, n)``. Because the generation is linear, the mean over the K sets commutes with the sum over templates, so the
weight is one contraction ``tensordot(C.mean(0), T)`` instead of the authors' K stacked per-set products.

:class:`ReparamLinear` and :class:`ReparamConv2d` are plain modules that expose ``weight`` (generated), ``bias`` and
the attributes of ``nn.Linear`` / ``nn.Conv2d``, so adapters written for those layers (LoRA, DoRA, Piggyback, CLR)
wrap them unchanged for ``recast+X``. The bank is deliberately *not* a registered child of each layer: it is
registered once (by the surgery, under ``backbone.recast_banks``), so its parameters have one name and are saved once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.engine.fold import Foldable


class TemplateBank(nn.Module):
    """``n`` templates of one weight shape, shared by every module of a group (paper: ``tau_g``)."""

    def __init__(self, num_templates: int, weight_shape: tuple[int, ...], init: bool = True) -> None:
        super().__init__()
        if num_templates <= 0:
            raise ValueError(f"a template bank needs >= 1 template, got {num_templates}")
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.templates = nn.Parameter(torch.empty(num_templates, *self.weight_shape))
        if init:  # skipped when mimicked templates are copied in right away
            self.reset_parameters()

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    def reset_parameters(self) -> None:
        # The authors' init: each template kaiming-normal as if it were the layer's weight (fan-in of one template).
        with torch.no_grad():
            for i in range(self.num_templates):
                nn.init.kaiming_normal_(self.templates[i])

    @property
    def channels_last(self) -> bool:
        """Whether conv templates are stored so that the generated kernel comes out NHWC (:meth:`channels_last_`)."""
        t = self.templates
        return t.dim() == 5 and t.permute(0, 1, 3, 4, 2).is_contiguous()  # 1x1 kernels: both layouts at once

    def channels_last_(self) -> TemplateBank:
        """Store conv templates (``n, O, I, kh, kw``) with ``I`` innermost, so that :meth:`generate` returns the kernel
        in ``torch.channels_last`` without a copy; a no-op for linear banks.

        ``Module.to(memory_format=torch.channels_last)`` refuses these 5-d tensors. An NCHW kernel beside NHWC inputs
        would not fail either: cuDNN would convert it, in the forward and again in the backward, on every step. Stored
        this way, the contraction writes the NHWC kernel directly and its gradient flows back without a copy.
        """
        t = self.templates
        if t.dim() == 5:
            t.data = t.data.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return self

    def generate(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``mean_k sum_i C[k, i] T[i]`` for coefficients of shape ``(K, n)``, in one contraction, always in fp32."""
        # The weight is a sum of large, partly cancelling template terms (templates are ~8x the weight's norm after
        # mimicry): under bf16 autocast the contraction itself would run in bf16 and lose ~3e-3 relative accuracy
        # (measured on ViT-S), so it runs in fp32 and the layer's matmul casts the result once.
        with torch.autocast(self.templates.device.type, enabled=False):
            c = coefficients.mean(0).float()
            t = self.templates.float()
            if self.channels_last:  # the same contraction over the (n, O, kh, kw, I) storage, viewed back as NCHW
                n, o, i, kh, kw = t.shape
                w = (c @ t.permute(0, 1, 3, 4, 2).reshape(n, -1)).view(o, kh, kw, i)
                return w.permute(0, 3, 1, 2)
            return torch.tensordot(c, t, dims=1)

    def extra_repr(self) -> str:
        return f"templates={self.num_templates}, shape={self.weight_shape}"


class _Reparam(Foldable, nn.Module):
    """Shared logic: coefficients, the generated ``weight`` property and its never-stale inference cache."""

    def __init__(self, bank: TemplateBank, num_sets: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        if num_sets <= 0:
            raise ValueError(f"need >= 1 coefficient set, got {num_sets}")
        # Not registered as a child (see module docstring); object.__setattr__ bypasses nn.Module's registration.
        object.__setattr__(self, "bank", bank)
        self.coefficients = nn.Parameter(torch.empty(num_sets, bank.num_templates))
        nn.init.orthogonal_(self.coefficients)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.cache_weight = True
        """Reuse the generated weight while gradients are off and neither coefficients nor templates changed."""
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def merged_weight(self) -> torch.Tensor:
        """The generated weight, freshly (not from the inference cache)."""
        return self.bank.generate(self.coefficients)

    @property
    def num_sets(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    def num_templates(self) -> int:
        return int(self.coefficients.shape[1])

    def _cache_key(self) -> tuple:
        # Host-side only, so checking it never waits for the device: every in-place update of a tensor (optimizer
        # steps, copy_, load_state_dict) bumps its version counter, and ``.data =`` reassignment changes data_ptr.
        # Writes through ``p.data`` (e.g. ``p.data.copy_``) bypass the version counter: call invalidate_cache after
        # them (RECAST's own state loading does).
        c, t = self.coefficients, self.bank.templates
        return (c._version, c.data_ptr(), c.dtype, t._version, t.data_ptr(), t.device, t.dtype)

    def invalidate_cache(self) -> None:
        self._cache = None

    @property
    def weight(self) -> torch.Tensor:
        """The generated weight. Cached only when autograd is off (evaluation), and never stale.

        Under ``torch.compile`` it is always generated inside the graph: the cache key reads version counters and
        ``data_ptr()``, which Dynamo cannot trace (a graph break per layer), and a compiled graph holds no state.
        """
        if not self.cache_weight or torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._cache = None
            return self.bank.generate(self.coefficients)
        key = self._cache_key()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        w = self.bank.generate(self.coefficients)
        self._cache = (key, w)
        return w

    def __getstate__(self) -> dict:
        # Pickling and deepcopy drop the cache: it is recomputed on demand.
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


class ReparamLinear(_Reparam):
    """A Linear layer whose weight is generated from a shared template bank (drop-in for ``nn.Linear``)."""

    def __init__(self, bank: TemplateBank, num_sets: int, bias: torch.Tensor | None = None) -> None:
        if len(bank.weight_shape) != 2:
            raise ValueError(f"ReparamLinear needs 2-d templates, got shape {bank.weight_shape}")
        super().__init__(bank, num_sets, bias)
        self.out_features, self.in_features = bank.weight_shape

    @classmethod
    def from_linear(cls, layer: nn.Linear, bank: TemplateBank, num_sets: int) -> ReparamLinear:
        if tuple(layer.weight.shape) != bank.weight_shape:
            raise ValueError(f"layer weight {tuple(layer.weight.shape)} does not match templates {bank.weight_shape}")
        return cls(bank, num_sets, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"templates={self.num_templates}, sets={self.num_sets}"
        )


class ReparamConv2d(_Reparam):
    """A Conv2d whose kernel is generated from a shared template bank (drop-in for ``nn.Conv2d``, zero padding)."""

    def __init__(
        self,
        bank: TemplateBank,
        num_sets: int,
        bias: torch.Tensor | None = None,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] | str = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
    ) -> None:
        if len(bank.weight_shape) != 4:
            raise ValueError(f"ReparamConv2d needs 4-d templates, got shape {bank.weight_shape}")
        super().__init__(bank, num_sets, bias)
        self.out_channels, cin_per_group, kh, kw = bank.weight_shape
        self.in_channels = cin_per_group * groups
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), padding, tuple(dilation), groups
        self.padding_mode = "zeros"

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, bank: TemplateBank, num_sets: int) -> ReparamConv2d:
        if tuple(layer.weight.shape) != bank.weight_shape:
            raise ValueError(f"layer weight {tuple(layer.weight.shape)} does not match templates {bank.weight_shape}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"only zero-padded convolutions can be reparameterised, got {layer.padding_mode!r}")
        return cls(bank, num_sets, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, templates={self.num_templates}, sets={self.num_sets}"
        )


REPARAM_TYPES = (ReparamLinear, ReparamConv2d)


def regenerate(layers: Iterable[nn.Module]) -> None:
    """Fill every generated-weight layer's inference cache now, so the next forward runs at the plain model's speed
    (the second half of a task switch: the engine's learner, perf and the deploy bench all switch through this)."""
    with torch.no_grad():
        for m in layers:
            if isinstance(m, REPARAM_TYPES):
                m.weight  # noqa: B018 (fills the layer's inference cache)


def joint_orthogonal_(coefficients: list[torch.Tensor], gain: float = 1.0) -> None:
    """Initialise the coefficient sets of every module sharing one bank *jointly* orthogonal, in place.

    The ``sum_m K_m`` coefficient vectors of length ``n`` are stacked into one matrix and orthogonally initialised
    together (Savarese & Maire 2019; Shapeshifter, Plummer et al. 2022): rows are orthonormal when there are at most
    ``n`` of them, otherwise the columns are. The authors' code initialises each set separately, which leaves
    different layers' coefficients correlated.
    """
    if not coefficients:
        return
    rows = [c.shape[0] for c in coefficients]
    mat = torch.empty(sum(rows), coefficients[0].shape[1])
    nn.init.orthogonal_(mat, gain=gain)
    # Rows of an orthogonal matrix have norm <= 1 and shrink as 1/sqrt(rows) when rows > n; rescale so each
    # coefficient vector has unit norm on average, independent of how many modules share the bank.
    mat *= math.sqrt(max(1.0, sum(rows) / mat.shape[1]))
    with torch.no_grad():
        for c, part in zip(coefficients, mat.split(rows)):
            c.copy_(part.to(c.dtype))
