"""Neural Mimicry (paper section 2.2, Algorithm 2, Eq. 3): fit templates and coefficients to pretrained weights.

No data is used: the loss is between generated and pretrained weights, summed over modules with a per-type weight.

* ``init="random"`` is the paper's procedure, with the settings of the authors' notebooks: kaiming templates,
  orthogonal coefficients, RMSprop (ViT lr 0.1, StepLR(200, 0.1), 1000 iterations; ResNet lr 0.2, StepLR(500, 0.1),
  3000 iterations), gradient-norm clip 1.0, loss weight 2.0 per ViT module (ResNet conv1 3.5, conv2 2.5), and the
  lowest-loss copy is kept.
* ``init="svd"`` (default, beyond the paper): per bank, stack the M member weights as rows of an ``M x D`` matrix;
  by Eckart-Young its top-n right singular vectors are the least-squares optimal templates and the projections the
  optimal coefficients (every one of the K sets gets the projection, so their mean is exact). When ``n >= M`` the
  reconstruction is exact. Scaling: templates carry ``S_i / sqrt(M)`` and coefficients ``sqrt(M) U``, so the
  coefficient matrix of a bank is jointly orthogonal with O(1) entries, like the Savarese & Maire init, which keeps
  the per-task AdamW learning rate of the paper meaningful. Then the chosen loss refines (Adam, step size relative
  to each tensor's RMS) and stops once the loss plateaus.
* Losses: ``smoothl1``, ``mse``, ``smoothl1_noise`` (coefficients + N(0, sigma) noise while mimicking, sigma 1e-4 as
  in the authors' code), ``vae`` / ``vae_mse``: the paper's "VAE" (in the authors' code a deterministic encoder) -- a
  small per-bank MLP maps each member's weight (average-pooled to at most 1024 values; the authors feed the full
  flattened weight) to its K x n coefficients, trained jointly with the templates (RMSprop 2e-3, cosine schedule,
  clip 1.0 as in their notebook).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.recast.layers import joint_orthogonal_
from recast_bench.recast.surgery import BankPlan, RecastPlan

LOSSES = ("smoothl1", "mse", "smoothl1_noise", "vae", "vae_mse")
INITS = ("svd", "random")
PAPER = {
    # family: (RMSprop lr, StepLR step, iterations, {kind: loss weight})
    "vit": (0.1, 200, 1000, {"qkv": 2.0, "proj": 2.0, "fc1": 2.0, "fc2": 2.0}),
    "resnet": (0.2, 500, 3000, {"conv1": 3.5, "conv2": 2.5}),
}


@dataclass
class MimicConfig:
    """Neural Mimicry settings; ``None`` fields take the paper's value for the backbone family."""

    loss: str = "smoothl1"
    """``smoothl1`` | ``mse`` | ``smoothl1_noise`` | ``vae`` | ``vae_mse``. Paper's best: SmoothL1."""
    init: str = "svd"
    """``svd`` (closed form, then refine) or ``random`` (the paper's kaiming + orthogonal init)."""
    iters: int | None = None
    """Maximum iterations. ``None``: paper (ViT 1000, ResNet 3000)."""
    lr: float | None = None
    """RMSprop learning rate for ``init=random``. ``None``: paper (ViT 0.1, ResNet 0.2)."""
    step_size: int | None = None
    """StepLR period for ``init=random``. ``None``: paper (ViT 200, ResNet 500)."""
    gamma: float = 0.1
    grad_clip: float | None = 1.0
    """Gradient-norm clip (authors' notebooks: 1.0)."""
    noise_std: float = 1e-4
    """Coefficient noise for ``smoothl1_noise`` (authors' code: randn * 1e-4)."""
    refine_lr: float = 1e-3
    """Adam step of the SVD refinement, relative to each tensor's RMS."""
    patience: int = 50
    """SVD refinement stops after this many iterations without a relative loss improvement of ``tol``."""
    tol: float = 1e-4
    vae_hidden: int = 64
    vae_lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    module_weights: dict[str, float] | None = None
    """Loss weight per module type; ``None``: paper (ViT 2.0 each; ResNet conv1 3.5, conv2 2.5)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"mimicry loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.init not in INITS:
            raise ValueError(f"mimicry init must be svd or random, got {self.init!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"mimicry iters must be >= 0, got {self.iters}")
        for name in ("lr", "refine_lr", "vae_lr"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"mimicry {name} must be > 0, got {v}")
        if self.patience < 0 or self.tol < 0 or self.noise_std < 0:
            raise ValueError("mimicry patience, tol and noise_std must be >= 0")

    def resolved(self, family: str) -> MimicConfig:
        """A copy with every ``None`` replaced by the paper's value for ``family``."""
        lr, step, iters, weights = PAPER[family]
        return MimicConfig(
            **{
                **asdict(self),
                "lr": self.lr if self.lr is not None else lr,
                "step_size": self.step_size if self.step_size is not None else step,
                "iters": self.iters if self.iters is not None else iters,
                "module_weights": dict(self.module_weights) if self.module_weights is not None else dict(weights),
            }
        )

    def cache_dict(self) -> dict[str, Any]:
        """The fields that change the result (``device`` does not, up to float rounding)."""
        d = asdict(self)
        d.pop("device")
        return d


@dataclass
class MimicResult:
    templates: dict[str, torch.Tensor]
    """Bank key -> ``(n, *weight_shape)``."""
    coefficients: dict[str, torch.Tensor]
    """Module name -> ``(K, n)``."""
    history: list[float] = field(default_factory=list)
    """Total loss per iteration (the initial loss first)."""
    iters_run: int = 0
    seconds: float = 0.0
    from_cache: bool = False


def svd_init(weights: torch.Tensor, n: int, sets: int, generator: torch.Generator | None = None):
    """Least-squares optimal ``(templates (n, *shape), coefficients (M, K, n))`` for ``weights`` (M, *shape).

    The thin SVD of the wide ``M x D`` matrix comes from the eigen-decomposition of its ``M x M`` Gram matrix (in
    float64): ``O(M^2 D)`` instead of a LAPACK SVD of the whole matrix, which is what makes ViT-L mimicry take seconds.
    Directions with singular value below 1e-6 of the largest count as absent (rank-deficient banks).
    """
    m = weights.shape[0]
    x = weights.reshape(m, -1).double()
    evals, evecs = torch.linalg.eigh(x @ x.T)
    s, u = evals.flip(0).clamp_min(0).sqrt(), evecs.flip(1)  # descending
    r = min(n, int((s > 1e-6 * s[0]).sum())) if s.numel() and s[0] > 0 else 0
    vh = (u[:, :r].T @ x) / s[:r, None]
    scale = math.sqrt(m)
    tmpl = torch.zeros(n, x.shape[1], dtype=torch.float64)
    coef = torch.zeros(m, n, dtype=torch.float64)
    tmpl[:r] = vh * (s[:r, None] / scale)
    coef[:, :r] = u[:, :r] * scale
    if n > r:
        # More templates than members: the extra ones get fresh directions orthogonal to the span (zero coefficient,
        # so the reconstruction stays exact) instead of zeros, so that per-task tuning can still use them.
        extra = torch.randn(n - r, x.shape[1], generator=generator, dtype=torch.float64)
        extra -= (extra @ vh.T) @ vh
        q, _ = torch.linalg.qr(extra.T)
        level = float(s[:r].mean()) / scale if r else float(x.norm()) / math.sqrt(m * n) + 1e-12
        tmpl[r:] = q.T[: n - r] * level
    templates = tmpl.reshape(n, *weights.shape[1:]).to(weights.dtype)
    coefficients = coef[:, None, :].expand(m, sets, n).to(weights.dtype).clone()
    return templates, coefficients


def random_init(bank: BankPlan, sets: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' init: kaiming-normal templates; coefficients jointly orthogonal across the bank (our fix)."""
    templates = torch.empty(bank.num_templates, *bank.weight_shape, dtype=dtype)
    for i in range(bank.num_templates):
        nn.init.kaiming_normal_(templates[i])
    coefs = [torch.empty(sets, bank.num_templates, dtype=dtype) for _ in bank.modules]
    joint_orthogonal_(coefs)
    return templates, torch.stack(coefs)


class CoefficientEncoder(nn.Module):
    """The "VAE" variant's per-bank encoder: a member's pooled weight -> its K x n coefficients."""

    def __init__(self, in_dim: int, hidden: int, sets: int, n: int) -> None:
        super().__init__()
        self.sets, self.n, self.in_dim = sets, n, in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, sets * n),
        )

    def features(self, weights: torch.Tensor) -> torch.Tensor:
        flat = weights.reshape(weights.shape[0], 1, -1)
        pooled = F.adaptive_avg_pool1d(flat, min(self.in_dim, flat.shape[-1])).squeeze(1)
        # Standardise per member so the encoder sees the pattern, not the (tiny) absolute scale of weights.
        return (pooled - pooled.mean(1, keepdim=True)) / (pooled.std(1, keepdim=True) + 1e-8)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(weights)).view(-1, self.sets, self.n)


def _loss_fn(name: str):
    return F.mse_loss if name in ("mse", "vae_mse") else F.smooth_l1_loss


class _Fitter(nn.Module):
    """All banks of a plan as batched tensors: templates ``(n, *shape)`` and coefficients ``(M, K, n)`` per bank."""

    def __init__(self, plan: RecastPlan, targets: dict[str, torch.Tensor], cfg: MimicConfig) -> None:
        super().__init__()
        self.plan, self.cfg = plan, cfg
        self.keys = [b.key for b in plan.banks]
        dev = torch.device(cfg.device)
        self.targets = [torch.stack([targets[m] for m in b.modules]).to(dev, torch.float32) for b in plan.banks]
        self.weights = [float(cfg.module_weights[b.kind]) for b in plan.banks]  # type: ignore[index]
        gen = torch.Generator().manual_seed(cfg.seed)
        tmpl, coef = [], []
        for b, x in zip(plan.banks, self.targets):
            t, c = (
                svd_init(x.cpu(), b.num_templates, plan.sets, gen)
                if cfg.init == "svd"
                else random_init(b, plan.sets, torch.float32)
            )
            tmpl.append(nn.Parameter(t.to(dev)))
            coef.append(nn.Parameter(c.to(dev)))
        self.templates = nn.ParameterList(tmpl)
        self.coefficients = nn.ParameterList(coef)
        self.vae = cfg.loss.startswith("vae")
        self.encoders = nn.ModuleList(
            [CoefficientEncoder(1024, cfg.vae_hidden, plan.sets, b.num_templates) for b in plan.banks]
            if self.vae
            else []
        ).to(dev)
        self.loss_fn = _loss_fn(cfg.loss)

    def bank_coefficients(self, i: int) -> torch.Tensor:
        return self.encoders[i](self.targets[i]) if self.vae else self.coefficients[i]

    def generate(self, i: int, noise: bool = False) -> torch.Tensor:
        c = self.bank_coefficients(i)
        if noise:
            c = c + torch.randn_like(c) * self.cfg.noise_std
        return torch.tensordot(c.mean(1), self.templates[i], dims=1)

    def loss(self, noise: bool = False) -> torch.Tensor:
        total = torch.zeros((), device=self.targets[0].device)
        for i, x in enumerate(self.targets):
            per_module = self.loss_fn(self.generate(i, noise), x, reduction="none").flatten(1).mean(1)
            total = total + self.weights[i] * per_module.sum()
        return total

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        templates, coefficients = {}, {}
        with torch.no_grad():
            for i, b in enumerate(self.plan.banks):
                templates[b.key] = self.templates[i].detach().cpu().clone().contiguous()
                c = self.bank_coefficients(i).detach().cpu()
                for j, m in enumerate(b.modules):
                    coefficients[m] = c[j].clone().contiguous()
        return templates, coefficients


def _optimizer(fit: _Fitter, cfg: MimicConfig):
    if fit.vae:
        params = list(fit.templates.parameters()) + list(fit.encoders.parameters())
        opt = torch.optim.RMSprop(params, lr=cfg.vae_lr)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.iters or 1)), params
    if cfg.init == "random":
        params = list(fit.parameters())
        opt = torch.optim.RMSprop(params, lr=cfg.lr)  # type: ignore[arg-type]
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma), params
    groups = []
    for p in list(fit.templates) + list(fit.coefficients):
        rms = float(p.detach().pow(2).mean().sqrt()) or 1.0
        groups.append({"params": [p], "lr": cfg.refine_lr * rms})
    opt = torch.optim.Adam(groups)
    return opt, None, [p for g in groups for p in g["params"]]


def neural_mimicry(targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig) -> MimicResult:
    """Fit ``plan``'s templates and coefficients to ``targets`` (module name -> pretrained weight)."""
    cfg = cfg.resolved(plan.family)
    # A private RNG stream: the result depends on cfg.seed only, and the caller's global RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _mimic(targets, plan, cfg)


def _mimic(targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig) -> MimicResult:
    start = time.perf_counter()
    fit = _Fitter(plan, targets, cfg)
    noise = cfg.loss == "smoothl1_noise"
    with torch.no_grad():
        initial = float(fit.loss())
        # Loss of the all-zero reconstruction: the scale for "exact" (SVD with n >= members gives ~1e-14 of it).
        zero = sum(w * fit.loss_fn(torch.zeros_like(x), x) * x.shape[0] for w, x in zip(fit.weights, fit.targets))
    exact = initial <= 1e-10 * float(zero) and not fit.vae and not noise
    best_loss, best_state, history = initial, copy.deepcopy(fit.state_dict()), [initial]
    opt, sched, params = _optimizer(fit, cfg)
    early_stop = cfg.init == "svd" and not fit.vae and cfg.patience > 0
    since_best = steps = 0
    while not exact and steps < cfg.iters:  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        loss = fit.loss(noise=noise)
        if steps:
            # The loss of the current parameters, i.e. after ``steps`` updates; the authors keep the lowest
            # training loss, which with noise on is noisy, so that case is re-evaluated without noise.
            with torch.no_grad():
                current = float(fit.loss()) if noise else float(loss)
            history.append(current)
            since_best = 0 if current < best_loss * (1 - cfg.tol) else since_best + 1
            if current < best_loss:
                best_loss, best_state = current, copy.deepcopy(fit.state_dict())
            if early_stop and since_best >= cfg.patience:
                break
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        steps += 1
    fit.load_state_dict(best_state)
    templates, coefficients = fit.export()
    return MimicResult(templates, coefficients, history, steps, time.perf_counter() - start)


def weight_cosines(targets: dict[str, torch.Tensor], generated: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine similarity between each pretrained and generated weight (flattened), by module name."""
    out = {}
    for m, a in targets.items():
        a, b = a.flatten().float(), generated[m].flatten().float().to(a.device)
        # float32 products, float64 sums: exact enough for 0.9999-level checks at a fraction of the cost of float64.
        dot, na, nb = (float((u * v).sum(dtype=torch.float64)) for u, v in ((a, b), (a, a), (b, b)))
        out[m] = min(1.0, dot / max((na * nb) ** 0.5, 1e-300))
    return out


def reconstruct(plan: RecastPlan, templates: dict[str, torch.Tensor], coefficients: dict[str, torch.Tensor]):
    """Generated weight per module from saved templates and coefficients (no model needed)."""
    bank_of = plan.bank_of()
    return {m: torch.tensordot(coefficients[m].mean(0), templates[bank_of[m].key], dims=1) for m in plan.modules()}
