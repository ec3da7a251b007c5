"""Neural Mimicry (paper section 2.2, Algorithm 2, Eq. 3): fit templates and coefficients to pretrained weights.

No data is used: the loss is between generated and pretrained weights, summed over modules with a per-type weight.
Sources: the paper, then the authors' notebooks (appledora/RECAST_ICLR25 @ b7d9160, ``notebooks/reconstruction-*``).

* ``init="random"`` (default; the paper's procedure, as in the authors' notebooks): kaiming-normal templates
  (``fan_out`` for attention ``qkv`` as in ``models/RECAST-Att.py``, the default ``fan_in`` for fc1/fc2 and ResNet
  convs), every coefficient set its own orthogonal init (a random unit vector per set and module, as the authors),
  RMSprop (ViT lr 0.1, StepLR(200, 0.1), 1000 iterations; ResNet lr 0.2, StepLR(500, 0.1), 3000 iterations),
  gradient-norm clip 1.0 (both families), loss weight 2.0 per ViT module (ResNet conv1 3.5, conv2 2.5), and the
  lowest-loss copy is kept. ``proj`` templates (never templated by the authors) use ``fan_in``: ours.
* Default loss per family (``loss=None``): ViT ``smoothl1_noise`` -- the authors' ViT notebook adds N(0, 1e-4) noise
  to the coefficients while mimicking -- and ResNet ``smoothl1`` (their ResNet notebook sets the noise to 0).
  As in the authors' loop, with noise on the kept copy is chosen by the noisy training loss (and ``history`` records
  it).
* ``init="svd"`` (ours, the "RECAST, SVD init (ours)" row): per bank, stack the M member weights as rows of an
  ``M x D`` matrix; by Eckart-Young its top-n right singular vectors are the least-squares optimal templates and the
  projections the optimal coefficients; with ``n >= M`` the reconstruction is exact (then the refinement loop does
  not run). Two choices make it comparable with the paper's init:

  - scale: every template gets Frobenius norm ``template_ratio`` x the RMS norm of the bank's member weights and
    the coefficients carry the rest, so a per-task AdamW step (which moves each coefficient by about lr) moves the
    generated weight as much as after the paper's procedure. Defaults (``SVD_SCALE``) are the ratios measured after
    the paper's procedure (``python -m recast_bench.recast.study scale``): see ``SVD_SCALE``.
  - distinct sets: the K sets start at ``mean + d_k`` with orthogonal offsets ``d_k`` that sum to zero, so their
    mean is the exact reconstruction while the sets differ, as the authors' per-set orthogonal init makes them
    differ; ``set_spread`` is ``RMS ||d_k|| / ||mean||``, default the spread measured after the paper's procedure.

* Losses: ``smoothl1``, ``mse``, ``smoothl1_noise`` (coefficients + N(0, ``noise_std``) while mimicking),
  ``vae`` / ``vae_mse``: the paper's "VAE" (in the authors' code a deterministic encoder, notebook
  ``reconstruction-vit-vae``) -- per bank, an MLP (hidden 8) maps each member's fully flattened weight to its
  coefficients, trained jointly with the templates: RMSprop 2e-3, cosine schedule over 2500 iterations, SmoothL1
  (``vae_mse``: MSE) averaged over the bank's members without module weights, gradient-norm clip 1.0 per bank, and
  per bank the copy with the highest mean cosine similarity is kept. Departure: the authors' encoder emits ``n``
  coefficient sets (``num_cf = n``), ours ``K`` (equal in the paper's n = K = 2 setting).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.recast.surgery import BankPlan, RecastPlan

LOSSES = ("smoothl1", "mse", "smoothl1_noise", "vae", "vae_mse")
INITS = ("random", "svd")
PAPER = {
    # family: (RMSprop lr, StepLR step, iterations, {kind: loss weight}); authors' reconstruction notebooks.
    "vit": (0.1, 200, 1000, {"qkv": 2.0, "proj": 2.0, "fc1": 2.0, "fc2": 2.0}),
    "resnet": (0.2, 500, 3000, {"conv1": 3.5, "conv2": 2.5}),
}
PAPER_LOSS = {"vit": "smoothl1_noise", "resnet": "smoothl1"}
"""Authors' notebooks: the ViT reconstruction adds coefficient noise 1e-4, the ResNet one sets it to 0."""
VAE_ITERS = 2500
"""Authors' ``reconstruction-vit-vae`` notebook: ``num_epochs=2500``."""
SVD_SCALE: dict[str, tuple[float, float]] = {
    # family: (template_ratio, set_spread) as measured after the paper's procedure (random init, authors' settings,
    # default spec) by ``python -m recast_bench.recast.study --parts scale`` on this project's 2-core CPU:
    #   vit_tiny pretrained here: ratio 7.96, spread 5.46, mean-coefficient RMS 0.147, weight cosine mean 0.951;
    #   vit_tiny random weights:  ratio 9.55, spread 7.65, RMS 0.135, cosine 0.877;
    #   vit_small random weights: ratio 7.68, spread 4.32, RMS 0.144, cosine 0.977 (456 s on the loaded CPU);
    #   resnet_tiny pretrained:   ratio 3.01, spread 1.90, RMS 0.216, cosine 1.000; random weights: 2.99, 1.81.
    # (No real pretrained ViT-S / ResNet-34 is available offline: rerun the study on them where they are.)
    # For comparison, the unscaled SVD gives each template S_i / sqrt(M), a ratio below 1 (0.71 for two equal ones).
    "vit": (8.0, 5.5),
    "resnet": (3.0, 1.9),
}
FAN_OUT_KINDS = ("qkv",)
"""Template kinds the authors initialise with kaiming ``fan_out`` (``models/RECAST-Att.py``)."""


@dataclass
class MimicConfig:
    """Neural Mimicry settings; ``None`` fields take the paper's (authors') value for the backbone family."""

    loss: str | None = None
    """smoothl1 | mse | smoothl1_noise | vae | vae_mse. None: authors' notebooks (ViT smoothl1_noise, ResNet
    smoothl1); the paper names SmoothL1 best (section 3.2, Figure 5a)."""
    init: str = "random"
    """random: the paper's procedure (kaiming templates, per-set orthogonal coefficients, RMSprop). svd: ours."""
    iters: int | None = None
    """Iterations. None: authors' notebooks (ViT 1000, ResNet 3000, VAE 2500); the paper's Table 5 says 1000."""
    lr: float | None = None
    """RMSprop learning rate for init=random. None: authors (ViT 0.1, ResNet 0.2)."""
    step_size: int | None = None
    """StepLR period for init=random. None: authors (ViT 200, ResNet 500)."""
    gamma: float = 0.1
    """StepLR factor (authors: 0.1)."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip (authors: 1.0 in the ViT, ResNet and VAE notebooks)."""
    noise_std: float = 1e-4
    """Coefficient noise of smoothl1_noise (authors' ViT notebook: randn * 1e-4)."""
    template_ratio: float | None = None
    """init=svd: each template's norm / RMS member-weight norm. None: SVD_SCALE, measured after the paper's
    procedure (ours)."""
    set_spread: float | None = None
    """init=svd: RMS distance of the K sets from their mean / norm of the mean. None: SVD_SCALE (ours)."""
    refine_lr: float = 1e-3
    """init=svd: Adam step of the refinement, relative to each tensor's RMS (ours)."""
    patience: int = 50
    """init=svd: the refinement stops after this many iterations without a relative improvement of tol (ours)."""
    tol: float = 1e-4
    vae_hidden: int = 8
    """VAE encoder width (authors: hidden_dim = 8)."""
    vae_lr: float = 2e-3
    """VAE RMSprop learning rate, cosine schedule (authors: 2e-3)."""
    seed: int = 0
    device: str = "cpu"
    """Where the fitting runs (the run's device); does not change the result beyond float rounding."""
    module_weights: dict[str, float] | None = None
    """Loss weight per module type; None: authors (ViT 2.0 each; ResNet conv1 3.5, conv2 2.5)."""

    def __post_init__(self) -> None:
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"mimicry loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.init not in INITS:
            raise ValueError(f"mimicry init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"mimicry iters must be >= 0, got {self.iters}")
        for name in ("lr", "refine_lr", "vae_lr", "template_ratio"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"mimicry {name} must be > 0, got {v}")
        if self.patience < 0 or self.tol < 0 or self.noise_std < 0 or (self.set_spread or 0) < 0:
            raise ValueError("mimicry patience, tol, noise_std and set_spread must be >= 0")

    def resolved(self, family: str) -> MimicConfig:
        """A copy with every ``None`` replaced by the paper's (authors') value for ``family``."""
        lr, step, iters, weights = PAPER[family]
        loss = self.loss or PAPER_LOSS[family]
        ratio, spread = SVD_SCALE[family]
        default_iters = VAE_ITERS if loss.startswith("vae") else iters
        return MimicConfig(
            **{
                **asdict(self),
                "loss": loss,
                "lr": self.lr if self.lr is not None else lr,
                "step_size": self.step_size if self.step_size is not None else step,
                "iters": self.iters if self.iters is not None else default_iters,
                "template_ratio": self.template_ratio if self.template_ratio is not None else ratio,
                "set_spread": self.set_spread if self.set_spread is not None else spread,
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


def svd_init(
    weights: torch.Tensor,
    n: int,
    sets: int,
    generator: torch.Generator | None = None,
    template_ratio: float | None = None,
    set_spread: float = 0.0,
):
    """Least-squares optimal ``(templates (n, *shape), coefficients (M, K, n))`` for ``weights`` (M, *shape).

    The thin SVD of the wide ``M x D`` matrix comes from the eigen-decomposition of its ``M x M`` Gram matrix (in
    float64): ``O(M^2 D)`` instead of a LAPACK SVD of the whole matrix, which is what makes ViT-L mimicry take seconds.
    Directions with singular value below 1e-6 of the largest count as absent (rank-deficient banks).

    Scale: with ``template_ratio`` every template has norm ``template_ratio * rms`` (``rms``: RMS Frobenius norm of the
    members); without it, template ``i`` carries ``S_i / sqrt(M)`` and the coefficients ``sqrt(M) U``. Sets: the K sets
    are the mean plus zero-sum orthogonal offsets of RMS norm ``set_spread`` x the mean's norm (0: identical sets).
    """
    m = weights.shape[0]
    x = weights.reshape(m, -1).double()
    evals, evecs = torch.linalg.eigh(x @ x.T)
    s, u = evals.flip(0).clamp_min(0).sqrt(), evecs.flip(1)  # descending
    r = min(n, int((s > 1e-6 * s[0]).sum())) if s.numel() and s[0] > 0 else 0
    vh = (u[:, :r].T @ x) / s[:r, None]
    rms = float(x.norm()) / math.sqrt(m)
    tnorm = torch.full((n,), template_ratio * rms if template_ratio else 0.0, dtype=torch.float64)
    if not template_ratio:
        tnorm[:r] = s[:r] / math.sqrt(m)
        tnorm[r:] = float(s[:r].mean()) / math.sqrt(m) if r else rms / math.sqrt(n) + 1e-12
    tmpl = torch.zeros(n, x.shape[1], dtype=torch.float64)
    coef = torch.zeros(m, n, dtype=torch.float64)
    tmpl[:r] = vh * tnorm[:r, None]
    coef[:, :r] = u[:, :r] * (s[:r] / tnorm[:r].clamp_min(1e-300))
    if n > r:
        # More templates than members: the extra ones get fresh directions orthogonal to the span (zero coefficient,
        # so the reconstruction stays exact) instead of zeros, so that per-task tuning can still use them.
        extra = torch.randn(n - r, x.shape[1], generator=generator, dtype=torch.float64)
        extra -= (extra @ vh.T) @ vh
        q, _ = torch.linalg.qr(extra.T)
        tmpl[r:] = q.T[: n - r] * tnorm[r:, None]
    templates = tmpl.reshape(n, *weights.shape[1:]).to(weights.dtype)
    coefficients = coef[:, None, :].expand(m, sets, n).clone()
    if sets > 1 and set_spread > 0:
        coefficients += set_offsets(m, sets, n, generator) * (set_spread * coef.norm(dim=1)[:, None, None])
    return templates, coefficients.to(weights.dtype)


def set_offsets(members: int, sets: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(members, K, n)`` offsets: per member, K orthogonal directions minus their mean (so they sum to zero exactly),
    scaled to RMS norm 1 over the K sets."""
    out = torch.zeros(members, sets, n, dtype=torch.float64)
    for j in range(members):
        a = torch.randn(max(sets, n), max(sets, n), generator=generator, dtype=torch.float64)
        q, _ = torch.linalg.qr(a)
        d = q[:sets, :n]
        d = d - d.mean(0, keepdim=True)
        norm = d.pow(2).sum(1).mean().sqrt()
        out[j] = d / norm if norm > 0 else d
    return out


def kaiming_templates(bank: BankPlan, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The authors' template init: kaiming-normal per template, ``fan_out`` for qkv (``models/RECAST-Att.py``)."""
    templates = torch.empty(bank.num_templates, *bank.weight_shape, dtype=dtype)
    mode = "fan_out" if bank.kind in FAN_OUT_KINDS else "fan_in"
    for i in range(bank.num_templates):
        nn.init.kaiming_normal_(templates[i], mode=mode, nonlinearity="relu")
    return templates


def per_set_orthogonal(members: int, sets: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The authors' coefficient init: ``nn.init.orthogonal_`` on each ``(n, 1, 1)`` set, i.e. a random unit vector per
    set and module, drawn independently (``(members, K, n)``)."""
    out = torch.empty(members, sets, n, dtype=dtype)
    for j in range(members):
        for k in range(sets):
            v = torch.empty(n, 1, dtype=dtype)
            nn.init.orthogonal_(v)
            out[j, k] = v[:, 0]
    return out


def random_init(bank: BankPlan, sets: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's init as the authors wrote it: kaiming templates, per-set orthogonal coefficients."""
    templates = kaiming_templates(bank, dtype)
    return templates, per_set_orthogonal(len(bank.modules), sets, bank.num_templates, dtype)


class CoefficientEncoder(nn.Module):
    """The "VAE" variant's per-bank encoder: a member's fully flattened weight -> its K x n coefficients.

    Authors (``GroupWeightReconstructor``): Linear(D, h), LeakyReLU, Linear(h, h), LeakyReLU, Linear(h, sets * n) on
    the raw flattened weight.
    """

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

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return self.net(weights.reshape(weights.shape[0], -1)).view(-1, self.sets, self.n)


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
            if cfg.init == "svd":
                t, c = svd_init(x.cpu(), b.num_templates, plan.sets, gen, cfg.template_ratio, cfg.set_spread or 0.0)
            else:
                t, c = random_init(b, plan.sets, torch.float32)
            tmpl.append(nn.Parameter(t.to(dev)))
            coef.append(nn.Parameter(c.to(dev)))
        self.templates = nn.ParameterList(tmpl)
        self.coefficients = nn.ParameterList(coef)
        self.vae = str(cfg.loss).startswith("vae")
        self.encoders = nn.ModuleList(
            [
                CoefficientEncoder(int(torch.Size(b.weight_shape).numel()), cfg.vae_hidden, plan.sets, b.num_templates)
                for b in plan.banks
            ]
            if self.vae
            else []
        ).to(dev)
        self.loss_fn = _loss_fn(str(cfg.loss))
        # Noise has its own generator on the fitting device: seeded by cfg.seed, the caller's RNGs stay untouched.
        self.noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)

    def bank_coefficients(self, i: int) -> torch.Tensor:
        return self.encoders[i](self.targets[i]) if self.vae else self.coefficients[i]

    def generate(self, i: int, noise: bool = False) -> torch.Tensor:
        c = self.bank_coefficients(i)
        if noise:
            c = c + torch.randn(c.shape, generator=self.noise_gen, device=c.device, dtype=c.dtype) * self.cfg.noise_std
        return torch.tensordot(c.mean(1), self.templates[i], dims=1)

    def bank_losses(self, noise: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per bank: the weighted loss and the generated weights ``(M, *shape)``.

        Neural Mimicry: ``weight * sum over members of the per-module mean loss`` (authors' sum over modules). VAE:
        the mean over the bank's members, unweighted (authors' ``smooth_l1_loss(recon_batch, fc_weights)``).
        """
        losses, generated = [], []
        for i, x in enumerate(self.targets):
            w = self.generate(i, noise)
            per_module = self.loss_fn(w, x, reduction="none").flatten(1).mean(1)
            losses.append(per_module.mean() if self.vae else self.weights[i] * per_module.sum())
            generated.append(w)
        return losses, generated

    def loss(self, noise: bool = False) -> torch.Tensor:
        return torch.stack(self.bank_losses(noise)[0]).sum()

    def bank_parameters(self, i: int) -> list[nn.Parameter]:
        own = list(self.encoders[i].parameters()) if self.vae else [self.coefficients[i]]
        return [self.templates[i], *own]

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
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.iters or 1))
    if cfg.init == "random":
        params = list(fit.templates) + list(fit.coefficients)
        opt = torch.optim.RMSprop(params, lr=cfg.lr)  # type: ignore[arg-type]
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    groups = []
    for p in list(fit.templates) + list(fit.coefficients):
        rms = float(p.detach().pow(2).mean().sqrt()) or 1.0
        groups.append({"params": [p], "lr": cfg.refine_lr * rms})
    return torch.optim.Adam(groups), None


def neural_mimicry(targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig) -> MimicResult:
    """Fit ``plan``'s templates and coefficients to ``targets`` (module name -> pretrained weight)."""
    cfg = cfg.resolved(plan.family)
    # A private CPU RNG stream for the inits (drawn on the CPU, then moved): the result depends on cfg.seed only,
    # whatever the device, and the caller's RNG state is untouched (the noise has its own device generator).
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        return _mimic(targets, plan, cfg)


def _bank_cosines(generated: list[torch.Tensor], targets: list[torch.Tensor]) -> list[float]:
    """Per bank: the mean over members of the cosine between generated and target weight (VAE model selection)."""
    return [float(F.cosine_similarity(g.flatten(1), x.flatten(1), dim=1).mean()) for g, x in zip(generated, targets)]


@torch.no_grad()
def _copy_into(best: list[list[torch.Tensor]], fit: _Fitter, banks) -> None:  # noqa: ANN001
    for i in banks:
        for b, p in zip(best[i], fit.bank_parameters(i)):
            b.copy_(p)


def _mimic(targets: dict[str, torch.Tensor], plan: RecastPlan, cfg: MimicConfig) -> MimicResult:
    start = time.perf_counter()
    fit = _Fitter(plan, targets, cfg)
    noise = cfg.loss == "smoothl1_noise"
    nb = len(fit.targets)
    with torch.no_grad():
        losses, generated = fit.bank_losses()
        initial = float(torch.stack(losses).sum())
        # Loss of the all-zero reconstruction: the scale for "exact" (SVD with n >= members gives ~1e-14 of it).
        zero = sum(w * fit.loss_fn(torch.zeros_like(x), x) * x.shape[0] for w, x in zip(fit.weights, fit.targets))
        best_cos = _bank_cosines(generated, fit.targets) if fit.vae else []
    # Exact (SVD with n >= members): no refinement, whatever the loss (noise could only make it worse).
    exact = initial <= 1e-8 * float(zero) and not fit.vae
    history = [initial]
    best_loss = initial
    # The kept copy lives in buffers allocated once and overwritten in place (no allocation per improvement).
    # VAE: the authors train each bank's reconstructor separately and keep, per bank, the most cosine-similar copy.
    best_banks = [[p.detach().clone() for p in fit.bank_parameters(i)] for i in range(nb)]
    opt, sched = _optimizer(fit, cfg)
    early_stop = cfg.init == "svd" and not fit.vae and cfg.patience > 0
    since_best = steps = 0
    while not exact and steps < cfg.iters:  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        losses, generated = fit.bank_losses(noise=noise)
        loss = torch.stack(losses).sum()
        if steps:
            # The loss of the current parameters, i.e. after ``steps`` updates; with noise on, the noisy training loss,
            # as the authors select (no second forward pass).
            with torch.no_grad():
                current = float(loss)
                cosines = _bank_cosines(generated, fit.targets) if fit.vae else []
            history.append(current)
            since_best = 0 if current < best_loss * (1 - cfg.tol) else since_best + 1
            if current < best_loss:
                best_loss = current
                if not fit.vae:
                    _copy_into(best_banks, fit, range(nb))
            for i, c in enumerate(cosines):
                if c > best_cos[i]:
                    best_cos[i] = c
                    _copy_into(best_banks, fit, [i])
            if early_stop and since_best >= cfg.patience:
                break
        loss.backward()
        if cfg.grad_clip:
            if fit.vae:  # one reconstructor per bank, clipped on its own (authors)
                for i in range(nb):
                    torch.nn.utils.clip_grad_norm_(fit.bank_parameters(i), cfg.grad_clip)
            else:  # authors: clip_grad_norm_(model.parameters(), 1.0), all templates and coefficients together
                torch.nn.utils.clip_grad_norm_(list(fit.templates) + list(fit.coefficients), cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        steps += 1
    with torch.no_grad():
        for i in range(nb):
            for p, v in zip(fit.bank_parameters(i), best_banks[i]):
                p.copy_(v)
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
