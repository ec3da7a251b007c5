"""FLOPs of one training step and of evaluation for every bench row, counted exactly on the real architectures.

Every row of ``make bench`` (both tables: ``python -m recast_bench.protocol list --backbone resnet34`` / ``vit_small``)
is built as a run builds it: the backbone at its size with random weights (only the structure matters; RECAST without
mimicry), the method's config from its protocol card, ``setup``, ``on_task_start`` on a two-image task, task 0's
head, and the engine's freezing policy (:func:`~recast_bench.engine.learner.unfreeze_for_task`). Then
``torch.utils.flop_counter`` counts one training step's forward (the method's loss included) and its backward, and
one evaluation forward, at 2 FLOPs per multiply-accumulate (matmuls, convolutions, attention; elementwise work is not
counted). Autograd skips the weight-gradient GEMM of a frozen weight, so the count shows what each row really costs:
about 3x forward when every weight trains, about 2x when the backbone is frozen behind adapters, and in between for
rows that need the gradient of a generated or masked weight (RECAST, Piggyback).

A step's FLOPs are affine in its batch: per image, plus work done once per step whatever the batch (RECAST generating
its weights from the template banks, DoRA's column norms). Both are solved from two batch sizes, so the cost model
charges the per-step part at the row's own batch size.

Avalanche rows train every weight through avalanche's strategy: the table holds that network's plain step (``full``)
and what their strategies add is modelled from their sources in :mod:`recast_bench.cost`; L2P is counted on
avalanche's own prompted ViT and its frozen query network. ``linear`` trains a head on cached features.

The table is packaged (``flops.json`` beside this module) so ``recast-bench cost`` builds no model:
``python -m recast_bench.perf.flops --write`` regenerates it (3 to 5 minutes on the shared 2-core CPU), ``--check``
compares, and without either it prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recast_bench.protocol.rows import parse_row

BATCHES = (2, 3)
"""Two batch sizes solve per-image and per-step FLOPs (training BatchNorm needs more than one value per channel: a
tiny ResNet's last stage is 1x1)."""
HEAD_CLASSES = 100
"""Classes of the counted task head (the six stream's tasks have 10 to 200; the head is < 0.01 % of a step)."""
BENCH_BACKBONES = ("resnet34", "vit_small")
REFERENCES = ("resnet34", "resnet50", "vit_small_patch16_224")
"""timm models at 224 px with the 1000-class head of the published throughputs the cost model's MFU is derived from."""
TABLE = "flops.json"
SCHEMA = 1


def _cpu_sdpa() -> dict[Any, Callable]:
    """The CPU's fused attention kernels, which torch's counter does not list, counted as model FLOPs: ``Q K^T`` and
    ``P V`` forward, their four gradient GEMMs backward (as the meta device's decomposition counts them; a fused
    kernel's recomputation of ``Q K^T`` in the backward is not model work). ``FlopCounterMode`` hands these formulas
    the shapes of the op's tensors."""
    from torch.utils.flop_counter import sdpa_flop_count

    def forward(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * sdpa_flop_count(q, k, v)

    aten = torch.ops.aten
    out: dict[Any, Callable] = {aten.convolution_backward: _conv_backward}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return out


def _conv_backward(grad_out: Any, x: Any, w: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """A convolution's backward: the input gradient as torch counts it, the weight gradient as the forward's count.

    torch's own formula counts the weight gradient as a convolution over every input channel, ignoring ``groups``:
    a depthwise 3x3 (CLR's reprogramming) comes out ``channels`` times too high. Each weight-gradient entry sums one
    product per forward multiply that used the weight, so it is exactly the forward's count, grouped or not.
    """
    from torch.utils.flop_counter import conv_flop_count

    transposed, output_mask = args[4], args[7]  # after bias, stride, padding, dilation; before output_padding, groups
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out, w, out_shape[0], not transposed)
    if output_mask[1]:
        flops += conv_flop_count(x, w, grad_out, transposed)
    return flops


@contextmanager
def counting() -> Iterator[Any]:
    """A ``FlopCounterMode`` that also counts the CPU's fused attention (its ``get_total_flops()`` is the count)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa()) as counter:
        yield counter


@dataclass
class StepFlops:
    """GFLOP of one row: per image, and per step whatever the batch (``*_fixed``)."""

    forward: float
    backward: float
    forward_fixed: float
    backward_fixed: float
    eval: float
    eval_fixed: float
    trainable: int
    """Trainable numbers of the counted step, task head excluded: the protocol card's per-task count (a check that
    the row was built as its card says)."""
    counted_on: str

    def train(self, batch: int) -> float:
        """GFLOP per training image at ``batch`` images per step."""
        return self.forward + self.backward + (self.forward_fixed + self.backward_fixed) / batch

    def eval_image(self, batch: int) -> float:
        return self.eval + self.eval_fixed / batch


def _affine(totals: dict[int, int]) -> tuple[float, float]:
    """``(per image, per step)`` GFLOP of FLOP counts that are affine in the batch size (exact: integer counts, two
    batch sizes one apart)."""
    (b1, f1), (b2, f2) = sorted(totals.items())
    per_image = (f2 - f1) // (b2 - b1)
    return per_image / 1e9, max(0, f1 - per_image * b1) / 1e9


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(images, labels) -> loss`` of one training step's forward."""
EvalFn = Callable[[torch.Tensor], torch.Tensor]


def count_step(train_fn: StepFn, eval_fn: EvalFn, modules: list[nn.Module], size: int, device: str) -> dict:
    """Forward, backward and evaluation GFLOP of ``train_fn``/``eval_fn`` at :data:`BATCHES` images of ``size`` px."""
    fwd, bwd, ev = {}, {}, {}
    for b in BATCHES:
        x = torch.randn(b, 3, size, size, device=device)
        y = torch.zeros(b, dtype=torch.long, device=device)
        for m in modules:
            m.train()
        with counting() as c:
            loss = train_fn(x, y)
        fwd[b] = c.get_total_flops()
        with counting() as c:
            loss.backward()
        bwd[b] = c.get_total_flops()
        for m in modules:
            m.eval()
        with torch.no_grad(), counting() as c:
            eval_fn(x)
        ev[b] = c.get_total_flops()
        for m in modules:
            m.train()
            m.zero_grad(set_to_none=True)
    (f, ff), (bw, bf), (e, ef) = _affine(fwd), _affine(bwd), _affine(ev)
    return {"forward": f, "backward": bw, "forward_fixed": ff, "backward_fixed": bf, "eval": e, "eval_fixed": ef}


# ---- building a row as a run does ---------------------------------------------------------------------------------
def _compose(card: Any, backbone: str, extra: list[str]) -> Any:
    """The config ``recast-bench run --method ... --backbone ...`` composes for ``card`` (its variant included)."""
    from recast_bench.cli import build_parser, run_config

    args = build_parser().parse_args(["run", "--method", card.id, "--backbone", backbone])  # NAME@VARIANT: the CLI's
    args.overrides = list(extra)
    return run_config(args)


STRUCTURE_ONLY = {
    "recast": ["method.recast.mimic_iters=0", "method.recast.cache=false"],
    "rosa": ["method.rosa.warmup_steps=0"],
    "inflora": ["method.inflora.max_batches=1"],
}
"""Overrides that skip work which sets values, not structure (mimicry, RoSA's warm-up, InfLoRA's covariance pass)."""
TWO_IMAGES = ["stream=synthetic", "++stream.num_tasks=2", "++stream.classes_per_task=[2,2]",
              "++stream.train_per_class=1", "++stream.val_per_class=1", "++stream.test_per_class=1"]  # fmt: skip
"""Two tasks of two images, for the hooks that read data and for avalanche's benchmark (built at the backbone's
size); the counted head has :data:`HEAD_CLASSES` classes whatever the task."""


def _backbone(name: str) -> tuple[nn.Module, Any]:
    from recast_bench.backbones import build_backbone

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as none:  # no weights: random init, the structure is all that counts
        bb, spec, _ = build_backbone(name, None, str(Path(none) / "none"), allow_random_init=True)
    return bb, spec


@contextmanager
def _method(card: Any, backbone: str, extra: list[str]) -> Iterator[tuple[Any, Any, nn.Module, Any]]:
    """``(config, method, backbone module, spec)`` of ``card`` on ``backbone``, its run context's cache a temporary
    directory while the block sets the method up."""
    from recast_bench.engine.build import build_method
    from recast_bench.engine.method import RunContext

    cfg = _compose(card, backbone, [*extra, *TWO_IMAGES])
    bb, spec = _backbone(backbone)
    method = build_method(card.method, cfg.method, spec.family)
    with tempfile.TemporaryDirectory(prefix="recast-flops-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.ctx = RunContext(
            backbone_name=spec.name, family=spec.family, cache_dir=tmp, seed=0, image_size=spec.image_size
        )
        yield cfg, method, bb, spec


def _lightning_row(card: Any, backbone: str) -> tuple[StepFn, EvalFn, list[nn.Module], int]:
    from torch.utils.data import DataLoader

    from recast_bench.config import TrainerConfig
    from recast_bench.data.stream import build_stream
    from recast_bench.engine.learner import unfreeze_for_task
    from recast_bench.engine.model import TaskModel
    from recast_bench.engine.step import TrainStep

    with _method(card, backbone, [o for part in card.parts for o in STRUCTURE_ONLY.get(part, [])]) as built:
        cfg, method, bb, spec = built
        model = TaskModel(bb, int(bb.num_features))
        task = build_stream(cfg.stream, image_size=spec.image_size)[0]
        method.setup(model)
        method.on_task_start(model, 0, task, DataLoader(task.train, batch_size=BATCHES[0]))
    model.add_head(0, HEAD_CLASSES)
    model.active_task = 0
    trainable = unfreeze_for_task(model, method, 0)
    step = TrainStep(model, method, 0, trainable, TrainerConfig())  # the engine's step: BN policy, loss, hooks

    def train_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        step.begin_batch()
        return step.loss(x, y)[0]

    head = sum(p.numel() for p in model.heads.parameters())
    return train_fn, (lambda x: model(x, 0)), [model], sum(p.numel() for p in trainable.values()) - head


def _full_row(backbone: str) -> tuple[StepFn, EvalFn, list[nn.Module], int]:
    """The backbone and a head with every weight training: the network avalanche's strategies train."""
    from recast_bench.engine.model import TaskModel

    bb, _ = _backbone(backbone)
    model = TaskModel(bb, int(bb.num_features))
    model.add_head(0, HEAD_CLASSES)
    model.active_task = 0
    model.requires_grad_(True)

    def train_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x, 0), y)

    return train_fn, (lambda x: model(x, 0)), [model], sum(p.numel() for p in model.backbone.parameters())


def _l2p_row(card: Any, backbone: str) -> tuple[StepFn, EvalFn, list[nn.Module], int]:
    """avalanche's LearningToPrompt as our adapter builds it: the frozen query ViT, then the prompted ViT."""
    from omegaconf import OmegaConf

    from recast_bench.data.stream import build_stream
    from recast_bench.engine.model import TaskModel

    with _method(card, backbone, []) as (cfg, method, bb, spec):
        tasks = build_stream(cfg.stream, image_size=spec.image_size)
        tcfg = OmegaConf.to_object(cfg.trainer)
        learner = method.make_learner(TaskModel(bb, int(bb.num_features)), tasks, tcfg, 0, "flops")
    s = learner.strategy

    def train_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s.original_vit.eval()  # LearningToPrompt.forward: the query features come from the frozen ViT, no grad
        with torch.no_grad():
            cls = s.original_vit(x)["pre_logits"]
        res = s.model(x=x, task_id=0, cls_features=cls, train=s.train_prompt_mask)
        return F.cross_entropy(res["logits"], y) - s.sim_coefficient * res["reduce_sim"]

    trainable = learner.adapter.trainable_params(s)  # prompts and keys; its head is avalanche's, over every class
    return train_fn, (lambda x: learner.adapter.logits(s, x, 0)), [s.model, s.original_vit], trainable


def _to_meta(modules: list[nn.Module]) -> None:
    for m in modules:
        m.to("meta")


def count_row(build: Callable[[], tuple[StepFn, EvalFn, list[nn.Module], int]], size: int) -> StepFlops:
    """Count a built row on the meta device (no memory, no compute); where an op of the row cannot run there, on
    the CPU (the same counts, a few seconds)."""
    for device in ("meta", "cpu"):
        train_fn, eval_fn, modules, trainable = build()
        try:
            if device == "meta":
                _to_meta(modules)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = count_step(train_fn, eval_fn, modules, size, device)
            return StepFlops(**got, trainable=trainable, counted_on=device)
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def row_builder(card: Any, backbone: str) -> Callable[[], tuple[StepFn, EvalFn, list[nn.Module], int]]:
    from recast_bench.registry import METHODS, load_all

    load_all()
    if card.method == "l2p":
        return lambda: _l2p_row(card, backbone)
    if METHODS.get(card.parts[0]).runner == "avalanche":
        return lambda: _full_row(backbone)
    return lambda: _lightning_row(card, backbone)


@dataclass(frozen=True)
class Entry:
    """A method entry as :func:`row_builder` needs it (a protocol card has these fields too)."""

    id: str
    method: str
    variant: str | None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.method.split("+"))


def count_entry(entry: str, backbone: str) -> StepFlops:
    """Count any method entry (``NAME`` or ``NAME@VARIANT``) on ``backbone`` now: what the table holds for the bench
    rows, for a row it does not have (seconds on the meta device, up to a minute on the CPU)."""
    from recast_bench.backbones import get_spec
    from recast_bench.protocol.cards import by_id, family_of

    spec = get_spec(backbone)
    if entry == "full":
        return count_row(lambda: _full_row(spec.name), spec.image_size)
    row = parse_row(entry)
    card = by_id(entry, family_of(backbone)) or Entry(row.id, row.name, row.variant)
    return count_row(row_builder(card, spec.name), spec.image_size)


def reference_flops(name: str) -> StepFlops:
    """A timm model at 224 px with its 1000-class head, every weight training (a published throughput's network)."""
    import timm

    def build() -> tuple[StepFn, EvalFn, list[nn.Module], int]:
        model = timm.create_model(name, pretrained=False, num_classes=1000)

        def train_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model(x), y)

        return train_fn, model, [model], sum(p.numel() for p in model.parameters())

    return count_row(build, 224)


def generate(backbones: tuple[str, ...] = BENCH_BACKBONES, references: tuple[str, ...] = REFERENCES) -> dict:
    """The whole table: every bench row of ``backbones``, their plain full and frozen-backbone steps, references."""
    import timm

    from recast_bench.backbones import get_spec
    from recast_bench.protocol.cards import bench_rows

    out: dict[str, Any] = {
        "schema": SCHEMA,
        "unit": "GFLOP (2 per multiply-accumulate) per image; *_fixed: per step, whatever the batch",
        "counted_with": f"torch {torch.__version__} torch.utils.flop_counter, timm {timm.__version__}",
        "batches": list(BATCHES),
        "head_classes": HEAD_CLASSES,
        "backbones": {},
        "references": {},
    }
    for name in backbones:
        spec = get_spec(name)
        rows = {}
        for card in bench_rows(name):
            rows[card.id] = asdict(count_row(row_builder(card, name), spec.image_size))
        out["backbones"][name] = {
            "image_size": spec.image_size,
            "full": asdict(count_row(lambda n=name: _full_row(n), spec.image_size)),
            "rows": rows,
        }
    for name in references:
        out["references"][name] = asdict(reference_flops(name))
    return out


def table_path() -> Path:
    return Path(str(resources.files("recast_bench.perf").joinpath(TABLE)))


@cache
def load_table() -> dict:
    """The packaged table (``python -m recast_bench.perf.flops --write`` regenerates it)."""
    return json.loads(table_path().read_text())


def row_flops(backbone: str, row: str, table: dict | None = None) -> StepFlops | None:
    """The packaged counts of bench row ``row`` on ``backbone`` (``None``: not in the table)."""
    entry = (table or load_table())["backbones"].get(backbone, {})
    got = entry.get("rows", {}).get(row) if row != "full" else entry.get("full")
    return StepFlops(**got) if got else None


def _batch(backbone: str, row: str) -> int:
    """The training batch of ``row`` on ``backbone`` (its protocol card; per-step work is shared by its images)."""
    from recast_bench.config import TrainerConfig
    from recast_bench.protocol.cards import by_id, family_of

    card = by_id(row, family_of(backbone))
    value = card.values.get("trainer.batch_size") if card else None
    return int(value.value) if value else TrainerConfig().batch_size


def format_table(table: dict) -> str:
    lines = []
    for name, entry in table["backbones"].items():
        lines.append(f"{name} at {entry['image_size']} px, GFLOP per image (per-step work shared by the card's batch)")
        lines.append(f"  {'row':<26}{'batch':>6}{'forward':>9}{'backward':>10}{'train':>8}{'/fwd':>6}{'eval':>8}"
                     f"{'trainable':>12}")  # fmt: skip
        for row, f in {"full": entry["full"], **entry["rows"]}.items():
            s, batch = StepFlops(**f), _batch(name, row if row != "full" else "recast")
            fwd, bwd = s.forward + s.forward_fixed / batch, s.backward + s.backward_fixed / batch
            lines.append(f"  {row:<26}{batch:>6}{fwd:>9.2f}{bwd:>10.2f}{fwd + bwd:>8.2f}{(fwd + bwd) / fwd:>6.2f}"
                         f"{s.eval_image(256):>8.2f}{s.trainable:>12,}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recast_bench.perf.flops", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"regenerate the packaged {TABLE}")
    p.add_argument("--check", action="store_true", help=f"fail when the packaged {TABLE} differs from a new count")
    args = p.parse_args(argv)
    if args.write or args.check:
        table = generate()
        if args.write:
            table_path().write_text(json.dumps(table, indent=1) + "\n")
        elif table != load_table():
            print(f"{table_path()} is out of date: run python -m recast_bench.perf.flops --write", file=sys.stderr)
            return 1
    else:
        table = load_table()
    print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
