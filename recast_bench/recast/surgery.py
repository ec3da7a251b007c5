"""Which modules RECAST reparameterises, how they are grouped, and the surgery that swaps them in.

Paper section 2.1 and appendix A.4.1; the grouping follows the authors' public code (appledora/RECAST_ICLR25):

* timm ViT: module types ``qkv`` (attention), ``fc1``/``fc2`` (MLP) and optionally ``proj``. Block ``l`` of ``L`` is
  in group ``g = floor(l / (L / G))``. Every module type has its own banks (templates have the module's shape), so
  ``mlp`` with G groups means ``2G`` banks. Biases, norms, patch embedding and head stay plain.
* torchvision ResNet-34 (and ``resnet_tiny``, same names): in each stage block 0 stays plain; blocks 1.. of a stage
  share one bank per conv (``conv1``, ``conv2``), with as many templates as templated blocks by default (2, 3, 5, 2
  for ResNet-34). Stem, downsample convs and BatchNorm stay plain.

A :class:`RecastPlan` is the plain-data result (bank keys, shapes, member modules); it is what the artifacts store,
so a saved RECAST model can be rebuilt without re-deriving the grouping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recast_bench.recast.layers import REPARAM_TYPES, ReparamConv2d, ReparamLinear, TemplateBank, joint_orthogonal_

VIT_KINDS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
"""Module type -> path inside a timm ViT block."""
VIT_TARGET_ALIASES = {"attn": ("qkv",), "mlp": ("fc1", "fc2"), "qkv": ("qkv",), "proj": ("proj",)}
VIT_TARGET_ALIASES |= {"fc1": ("fc1",), "fc2": ("fc2",)}
RESNET_KINDS = ("conv1", "conv2")
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
SHARING_SCHEMES = {"low": 2, "balanced": 4, "extreme": None}
"""Figure 6a: layers sharing one bank (``None``: all layers). n = layers per group, so G * n = L stays exact."""
BANKS_ATTR = "recast_banks"
PLAN_ATTR = "recast_plan"


@dataclass
class RecastSpec:
    """The user-facing RECAST shape: groups, templates per bank, coefficient sets, targets."""

    groups: int | None = None
    """G, ViT only (ResNet groups are its stages). ``None``: two blocks per group, the paper's Table 6 setting
    (G=6 for the 12-block ViT-S/B, 12 for ViT-L; 2 for the 4-block test ViT)."""
    templates: int = 2
    """n per bank, ViT. Paper: 2."""
    sets: int = 2
    """K coefficient sets per module. Paper: 2."""
    target: str = "mlp"
    """ViT modules: ``mlp``, ``attn``, ``attn+mlp``, optionally ``+proj`` (or single ``qkv``/``fc1``/``fc2``)."""
    sharing: str | None = None
    """Figure 6a scheme ``low`` | ``balanced`` | ``extreme``: sets G and n from the depth (overrides both)."""
    resnet_templates: int | None = None
    """n per ResNet bank; ``None``: templated blocks per stage (the authors' 2, 3, 5, 2)."""
    resnet_target: str = "conv1+conv2"
    """ResNet convs to template: ``conv1``, ``conv2`` or ``conv1+conv2``."""

    def __post_init__(self) -> None:
        for name in ("groups", "templates", "sets"):
            v = getattr(self, name)
            if name == "groups" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"recast {name} must be a positive integer, got {v!r}")
        if self.resnet_templates is not None and self.resnet_templates <= 0:
            raise ValueError(f"recast resnet_templates must be a positive integer or null, got {self.resnet_templates}")
        if self.sharing is not None and self.sharing not in SHARING_SCHEMES:
            raise ValueError(
                f"recast sharing must be one of {', '.join(SHARING_SCHEMES)} or null, got {self.sharing!r}"
            )
        vit_kinds(self.target)
        resnet_kinds(self.resnet_target)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vit_kinds(target: str) -> tuple[str, ...]:
    """``"attn+mlp"`` -> ``("qkv", "fc1", "fc2")`` in canonical order; unknown tokens raise ValueError."""
    tokens = [t.strip() for t in str(target).lower().split("+")]
    kinds: set[str] = set()
    for t in tokens:
        if t not in VIT_TARGET_ALIASES:
            raise ValueError(
                f"unknown recast target {t!r} in {target!r}; use mlp, attn, proj, qkv, fc1, fc2 joined by +"
            )
        kinds.update(VIT_TARGET_ALIASES[t])
    return tuple(k for k in VIT_KINDS if k in kinds)


def resnet_kinds(target: str) -> tuple[str, ...]:
    tokens = {t.strip() for t in str(target).lower().split("+")}
    if "conv" in tokens:
        tokens = (tokens - {"conv"}) | set(RESNET_KINDS)
    bad = tokens - set(RESNET_KINDS)
    if bad or not tokens:
        raise ValueError(f"unknown recast resnet_target {target!r}; use conv1, conv2 or conv1+conv2")
    return tuple(k for k in RESNET_KINDS if k in tokens)


@dataclass
class BankPlan:
    key: str
    """Unique, ModuleDict-safe name, e.g. ``fc1_g0`` or ``layer3_conv1``."""
    kind: str
    group: int
    num_templates: int
    weight_shape: tuple[int, ...]
    modules: list[str] = field(default_factory=list)
    """Qualified module names (in the backbone) that generate their weight from this bank."""
    layers: list[int] = field(default_factory=list)
    """Layer (ViT block / ResNet block) index of each member, for the intra-group coefficient similarity."""


@dataclass
class RecastPlan:
    family: str
    sets: int
    banks: list[BankPlan]
    spec: dict[str, Any] = field(default_factory=dict)

    def modules(self) -> list[str]:
        return [m for b in self.banks for m in b.modules]

    def bank_of(self) -> dict[str, BankPlan]:
        return {m: b for b in self.banks for m in b.modules}

    def per_task_params(self) -> int:
        """Paper section 2.3: sum over templated modules of n * K."""
        return sum(len(b.modules) * b.num_templates * self.sets for b in self.banks)

    def template_params(self) -> int:
        return sum(b.num_templates * int(torch.Size(b.weight_shape).numel()) for b in self.banks)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "sets": self.sets, "spec": self.spec, "banks": [asdict(b) for b in self.banks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecastPlan:
        banks = [BankPlan(**{**b, "weight_shape": tuple(b["weight_shape"])}) for b in d["banks"]]
        return cls(family=d["family"], sets=int(d["sets"]), banks=banks, spec=dict(d.get("spec", {})))


def _weight_shape(module: nn.Module, name: str, expected: type) -> tuple[int, ...]:
    if isinstance(module, REPARAM_TYPES):
        raise ValueError(f"{name} is already reparameterised by RECAST")
    if not isinstance(module, expected):
        raise ValueError(f"{name} is a {type(module).__name__}, RECAST expects {expected.__name__}")
    return tuple(module.weight.shape)


def plan_vit(backbone: nn.Module, spec: RecastSpec) -> RecastPlan:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or len(blocks) == 0:
        raise ValueError("backbone has no timm ViT `blocks`; RECAST's ViT surgery needs a timm VisionTransformer")
    depth = len(blocks)
    groups, n = spec.groups, spec.templates
    if groups is None:
        groups = depth // 2 if depth % 2 == 0 else depth
    if spec.sharing is not None:
        per_group = SHARING_SCHEMES[spec.sharing] or depth
        if depth % per_group:
            raise ValueError(f"sharing {spec.sharing!r} puts {per_group} blocks per group; {depth} blocks do not split")
        groups, n = depth // per_group, per_group
    if groups > depth or depth % groups:
        divisors = [g for g in range(1, depth + 1) if depth % g == 0]
        raise ValueError(f"recast groups={groups} must divide the {depth} blocks; choose one of {divisors}")
    banks = []
    for kind in vit_kinds(spec.target):
        for g in range(groups):
            layers = [layer for layer in range(depth) if layer * groups // depth == g]
            names = [f"blocks.{layer}.{VIT_KINDS[kind]}" for layer in layers]
            shapes = {_weight_shape(backbone.get_submodule(m), m, nn.Linear) for m in names}
            if len(shapes) != 1:
                raise ValueError(f"{kind} modules of group {g} have different shapes {sorted(shapes)}; cannot share")
            banks.append(BankPlan(f"{kind}_g{g}", kind, g, n, shapes.pop(), names, layers))
    spec_d = {**spec.to_dict(), "groups": groups, "templates": n}
    return RecastPlan("vit", spec.sets, banks, spec_d)


def plan_resnet(backbone: nn.Module, spec: RecastSpec) -> RecastPlan:
    banks = []
    for g, stage_name in enumerate(RESNET_STAGES):
        stage = getattr(backbone, stage_name, None)
        if not isinstance(stage, nn.Sequential):
            raise ValueError(f"backbone has no torchvision ResNet stage `{stage_name}`")
        templated = list(range(1, len(stage)))
        if not templated:
            continue  # a one-block stage has nothing to share (block 0 stays plain)
        n = spec.resnet_templates or len(templated)
        for kind in resnet_kinds(spec.resnet_target):
            names = [f"{stage_name}.{b}.{kind}" for b in templated]
            shapes = {_weight_shape(backbone.get_submodule(m), m, nn.Conv2d) for m in names}
            if len(shapes) != 1:
                raise ValueError(f"{kind} of {stage_name} blocks 1.. have different shapes {sorted(shapes)}")
            banks.append(BankPlan(f"{stage_name}_{kind}", kind, g, n, shapes.pop(), names, templated))
    if not banks:
        raise ValueError("no ResNet stage has more than one block: nothing for RECAST to share")
    return RecastPlan("resnet", spec.sets, banks, spec.to_dict())


def make_plan(backbone: nn.Module, family: str, spec: RecastSpec) -> RecastPlan:
    """The grouping of ``backbone``'s target modules; ValueError for an unsupported family or bad shape."""
    if family == "vit":
        return plan_vit(backbone, spec)
    if family == "resnet":
        return plan_resnet(backbone, spec)
    raise ValueError(f"RECAST supports backbone families vit and resnet, got {family!r}")


def target_weights(backbone: nn.Module, plan: RecastPlan) -> dict[str, torch.Tensor]:
    """The current (pretrained) weight of every module the plan templates, by qualified name."""
    return {m: backbone.get_submodule(m).weight.detach() for m in plan.modules()}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def apply_plan(
    backbone: nn.Module,
    plan: RecastPlan,
    templates: dict[str, torch.Tensor] | None = None,
    coefficients: dict[str, torch.Tensor] | None = None,
) -> nn.ModuleDict:
    """Replace the plan's modules by generated-weight layers; return the registered banks.

    Without ``templates``/``coefficients`` the banks get the authors' kaiming init and the coefficients of each bank
    are initialised jointly orthogonal. Given values are copied in (shapes are checked). The original weights are
    dropped; biases are kept (frozen by the engine).
    """
    if hasattr(backbone, BANKS_ATTR):
        raise ValueError("backbone already carries RECAST template banks")
    ref = next(backbone.parameters())
    banks = nn.ModuleDict()
    for b in plan.banks:
        bank = TemplateBank(b.num_templates, b.weight_shape, init=templates is None)
        bank = bank.to(device=ref.device, dtype=ref.dtype)
        if templates is not None:
            _copy_checked(bank.templates, templates[b.key], f"templates of {b.key}")
        new_layers = []
        for name in b.modules:
            old = backbone.get_submodule(name)
            if isinstance(old, nn.Linear):
                new = ReparamLinear.from_linear(old, bank, plan.sets)
            else:
                new = ReparamConv2d.from_conv(old, bank, plan.sets)
            new_layers.append(new.to(device=ref.device, dtype=ref.dtype))
            _set_submodule(backbone, name, new_layers[-1])
        joint_orthogonal_([m.coefficients for m in new_layers])
        if coefficients is not None:
            for name, m in zip(b.modules, new_layers):
                _copy_checked(m.coefficients, coefficients[name], f"coefficients of {name}")
        banks[b.key] = bank
    setattr(backbone, BANKS_ATTR, banks)
    object.__setattr__(backbone, PLAN_ATTR, plan)
    return banks


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"{what}: expected shape {tuple(dst.shape)}, got {tuple(src.shape)}")
    with torch.no_grad():
        dst.copy_(src.to(dst.device, dst.dtype))


def reparam_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every generated-weight layer of ``model`` by qualified name (works after adapters wrapped them)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, REPARAM_TYPES)}


def get_plan(backbone: nn.Module) -> RecastPlan:
    plan = getattr(backbone, PLAN_ATTR, None)
    if plan is None:
        raise ValueError("backbone has no RECAST plan (run the RECAST surgery first)")
    return plan


def generated_weights(backbone: nn.Module, plan: RecastPlan) -> dict[str, torch.Tensor]:
    """Current generated weight of each plan module (looked up by the plan's names)."""
    with torch.no_grad():
        return {m: backbone.get_submodule(m).weight.detach() for m in plan.modules()}
