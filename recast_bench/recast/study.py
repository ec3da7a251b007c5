"""Measure, rather than argue, what RECAST's init scale and K change: ``python -m recast_bench.recast.study --out DIR``.

Writes ``DIR/study.json`` with three parts (each also runnable alone with ``--parts``):

* ``scale``: after the paper's Neural Mimicry (random init, authors' settings) and after our SVD init, per backbone:
  template norm / RMS weight norm (``template_ratio``), RMS distance of the K sets from their mean relative to the
  mean (``set_spread``), RMS of the mean coefficients, and the weight cosine. These set ``mimicry.SVD_SCALE``.
* ``k_equivalence``: the same mimicked model trained with K=2 sets and collapsed to K=1 (the mean), same data, same
  AdamW steps (coefficients not decayed, as in the method): the largest difference in generated weights and logits.
  Generation is linear in the coefficients and Adam gives every set the same update, so K changes nothing.
* ``stream``: RECAST on the synthetic stream from the pretrained tiny ViT, paper vs SVD init x K=1 vs K=2, equal
  epochs and steps: average accuracy per arm (one seed; the CPU-sized check, not a paper number).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from recast_bench.recast.mimicry import MimicConfig, neural_mimicry, reconstruct, weight_cosines
from recast_bench.recast.surgery import RecastPlan, RecastSpec, apply_plan, make_plan, reparam_modules, target_weights

PARTS = ("scale", "k_equivalence", "stream")


def scale_figures(plan: RecastPlan, targets: dict[str, torch.Tensor], templates: dict, coefficients: dict) -> dict:
    """Template/weight norm ratio, set spread, coefficient RMS and weight cosine of one mimicry result."""
    ratios, spreads, coef_rms = [], [], []
    for b in plan.banks:
        rms_w = math.sqrt(sum(float(targets[m].double().pow(2).sum()) for m in b.modules) / len(b.modules))
        t = templates[b.key].double()
        ratios.append(float(t.flatten(1).norm(dim=1).mean()) / rms_w)
        for m in b.modules:
            c = coefficients[m].double()
            mean = c.mean(0)
            coef_rms.append(float(mean.pow(2).mean().sqrt()))
            spreads.append(float((c - mean).pow(2).sum(1).mean().sqrt() / mean.norm().clamp_min(1e-300)))
    cos = weight_cosines(targets, reconstruct(plan, templates, coefficients))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {
        "template_ratio": mean(ratios),
        "set_spread": mean(spreads),
        "coef_rms": mean(coef_rms),
        "weight_cosine_min": min(cos.values()),
        "weight_cosine_mean": mean(list(cos.values())),
    }


def _backbone(name: str, weights: str | None, seed: int = 0):
    from recast_bench.perf.models import seeded_backbone

    model, spec, _ = seeded_backbone(name, seed, "/nonexistent", weights)
    return model.eval(), spec.family


def scale(backbones: list[tuple[str, str | None]], iters: int | None, device: str) -> list[dict]:
    rows = []
    for name, weights in backbones:
        model, family = _backbone(name, weights)
        plan = make_plan(model, family, RecastSpec())
        targets = {k: v.clone() for k, v in target_weights(model, plan).items()}
        for init in ("random", "svd"):
            cfg = MimicConfig(init=init, iters=iters, device=device)
            t0 = time.perf_counter()
            r = neural_mimicry(targets, plan, cfg)
            row = {"backbone": name, "weights": "pretrained" if weights else "random", "init": init}
            row |= {"iters": r.iters_run, "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row | scale_figures(plan, targets, r.templates, r.coefficients))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def k_equivalence(weights: str | None, steps: int = 30, lr: float = 2e-3, seed: int = 0) -> dict:
    """Train the same mimicked ViT with K=2 and with its K=1 collapse (the mean); compare weights and logits."""
    base, family = _backbone("vit_tiny", weights)
    plan = make_plan(base, family, RecastSpec(sets=2))
    targets = target_weights(base, plan)
    r = neural_mimicry(targets, plan, MimicConfig(iters=50))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 8, 3, 32, 32, generator=g)
    y = torch.randint(0, 5, (steps, 8), generator=g)
    head0 = torch.nn.Linear(base.num_features, 5)
    models = {}
    for k in (2, 1):
        m = copy.deepcopy(base)
        p = RecastPlan(plan.family, k, copy.deepcopy(plan.banks), plan.spec)
        coefs = r.coefficients if k == 2 else {n: c.mean(0, keepdim=True) for n, c in r.coefficients.items()}
        apply_plan(m, p, r.templates, coefs)
        m.requires_grad_(False)
        head = copy.deepcopy(head0)
        params = [mod.coefficients for mod in reparam_modules(m).values()]
        opt = torch.optim.AdamW(
            [{"params": params, "weight_decay": 0.0}, {"params": list(head.parameters()), "weight_decay": 1e-6}],
            lr=lr,
        )
        for mod in params:
            mod.requires_grad_(True)
        for i in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(m(x[i])), y[i]).backward()
            opt.step()
        models[k] = (m.eval(), head)
    with torch.no_grad():
        w2 = {n: mod.weight for n, mod in reparam_modules(models[2][0]).items()}
        w1 = {n: mod.weight for n, mod in reparam_modules(models[1][0]).items()}
        dw = max(float((w2[n] - w1[n]).abs().max() / w1[n].abs().max()) for n in w1)
        start = {n: c.mean(0) for n, c in r.coefficients.items()}
        moved = max(
            float((mod.coefficients.mean(0) - start[n]).abs().max()) for n, mod in reparam_modules(models[1][0]).items()
        )
        xt = torch.randn(16, 3, 32, 32, generator=g)
        l2, l1 = (models[k][1](models[k][0](xt)) for k in (2, 1))
    return {
        "steps": steps,
        "lr": lr,
        "max_rel_weight_diff_k2_vs_k1": dw,
        "max_logit_diff_k2_vs_k1": float((l2 - l1).abs().max()),
        "max_coefficient_change": moved,
        "note": "same start (K=1 is the mean of the K=2 sets), same batches, AdamW without decay on coefficients",
    }


def stream(out: Path, weights_dir: Path, epochs: int, lr: float, linear: bool = True) -> list[dict]:
    """RECAST paper/SVD x K=1/2 on the synthetic stream at per-task lr ``lr`` (and linear probing for reference)."""
    from recast_bench.config import compose_config
    from recast_bench.engine.loop import run
    from recast_bench.pretrain import pretrain

    pretrain("vit_tiny", weights_dir, echo=False)
    arms = ([("linear", None)] if linear else []) + [(v, k) for v in ("paper", "svd") for k in (1, 2)]
    rows = []
    for variant, k in arms:
        method = "linear" if variant == "linear" else "recast"
        overrides = [
            f"method=[{method}]",
            f"method_name={method}",
            "backbone=vit_tiny",
            "stream=synthetic",
            "trainer=tiny",
            f"trainer.epochs={epochs}",
            "logger=csv",
            f"paths.weights_dir={weights_dir}",
            f"paths.cache_dir={out / 'cache'}",
            f"out={out / 'runs' / f'{variant}-K{k}-lr{lr}'}",
            "backbone.allow_random_init=false",
        ]
        if method == "recast":
            overrides += [f"method.recast.variant={variant}", f"method.recast.sets={k}", f"method.recast.lr={lr}"]
        t0 = time.perf_counter()
        res = run(compose_config(overrides))
        row = {"variant": variant, "K": k, "lr": lr if method == "recast" else "default", "epochs": epochs}
        row |= {
            "avg_acc": res["avg_acc"],
            "final_acc": res["final_acc"],
            "trainable_params_per_task": res["trainable_params_per_task"][0],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recast_bench.recast.study", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (study.json, runs, caches)")
    p.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    p.add_argument("--weights-dir", default="data/weights", help="where the pretrained tiny ViT is cached")
    p.add_argument(
        "--scale-backbones",
        nargs="*",
        default=["vit_tiny:pretrained", "vit_tiny", "vit_small", "resnet_tiny:pretrained", "resnet_tiny"],
    )
    p.add_argument("--scale-iters", type=int, default=None, help="mimicry iterations (default: the paper's)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per task in the stream part")
    p.add_argument("--lrs", nargs="*", type=float, default=[2e-3], help="per-task learning rates of the stream part")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights_dir = Path(args.weights_dir)
    report: dict[str, Any] = {"machine": {"threads": torch.get_num_threads(), "device": args.device}}
    from recast_bench.pretrain import pretrain

    tiny = str(pretrain("vit_tiny", weights_dir, echo=False)) if "k_equivalence" in args.parts else None
    if "scale" in args.parts:
        backbones = []
        for b in args.scale_backbones:  # NAME (random weights) or NAME:pretrained (tiny backbones, pretrained here)
            name, _, kind = b.partition(":")
            backbones.append((name, str(pretrain(name, weights_dir, echo=False)) if kind == "pretrained" else None))
        report["scale"] = scale(backbones, args.scale_iters, args.device)
    if "k_equivalence" in args.parts:
        report["k_equivalence"] = k_equivalence(tiny)
        print(json.dumps(report["k_equivalence"]), file=sys.stderr)
    if "stream" in args.parts:
        report["stream"] = [
            row for i, lr in enumerate(args.lrs) for row in stream(out, weights_dir, args.epochs, lr, linear=i == 0)
        ]
    (out / "study.json").write_text(json.dumps(report, indent=2))
    print(out / "study.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
