"""Pretrain a tiny backbone on the synthetic pretraining set, so demos start from a pretrained model as the paper does.

The result is cached as ``<weights_dir>/<backbone>.safetensors`` with a JSON sidecar recording the recipe, and it is
reused while the recipe is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recast_bench.backbones import build_backbone, get_spec, num_features
from recast_bench.data.synthetic import pretraining_set
from recast_bench.engine.checkpoint import save_tensors, write_json
from recast_bench.errors import UserError
from recast_bench.seed import seed_everything


@dataclass
class PretrainRecipe:
    classes: int = 24
    per_class: int = 64
    epochs: int = 6
    lr: float = 2e-3
    batch_size: int = 64
    seed: int = 0


def pretrain(backbone: str, weights_dir: str | Path = "data/weights", recipe: PretrainRecipe | None = None,
             force: bool = False, echo: bool = True) -> Path:  # fmt: skip
    """Train ``backbone`` (a tiny one) with a linear head on the pretraining set; returns the weight file."""
    recipe = recipe or PretrainRecipe()
    spec = get_spec(backbone)
    out = Path(weights_dir) / f"{backbone}.safetensors"
    sidecar = out.with_suffix(".json")
    fresh = out.exists() and sidecar.exists() and json.loads(sidecar.read_text()).get("recipe") == asdict(recipe)
    if fresh and not force:
        if echo:
            print(f"pretrained {backbone}: reusing {out}", file=sys.stderr)
        return out
    if spec.image_size > 64:
        raise UserError(f"pretrain is for the tiny demo backbones; {backbone} needs real pretrained weights")
    seed_everything(recipe.seed)
    model, _, _ = build_backbone(backbone, weights=None, weights_dir="/nonexistent", allow_random_init=True)
    head = nn.Linear(num_features(model), recipe.classes)
    data = pretraining_set(recipe.classes, spec.image_size, recipe.per_class, seed=12345 + recipe.seed)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * len(loader))
    start = time.perf_counter()
    model.train()
    for epoch in range(recipe.epochs):
        correct = total = 0
        for x, y in loader:
            logits = head(model(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        if echo:
            print(f"pretrain {backbone} epoch {epoch + 1}/{recipe.epochs}: train acc {100 * correct / total:.1f}",
                  file=sys.stderr)  # fmt: skip
    save_tensors(out, model.state_dict(), {"recipe": json.dumps(asdict(recipe))})
    write_json(sidecar, {"backbone": backbone, "recipe": asdict(recipe), "seconds": time.perf_counter() - start,
                         "train_acc": 100 * correct / total})  # fmt: skip
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a tiny backbone on synthetic data (demo, tests)",
        description="Pretrain vit_tiny or resnet_tiny on synthetic classes disjoint from the demo stream, and save "
        "the weights where runs look for them.",
    )
    p.add_argument("--backbone", default="vit_tiny", help="vit_tiny or resnet_tiny (default: vit_tiny)")
    p.add_argument("--weights-dir", default="data/weights", help="where to save the weights (default: data/weights)")
    p.add_argument("--epochs", type=int, default=PretrainRecipe.epochs, help="pretraining epochs")
    p.add_argument("--force", action="store_true", help="pretrain again even if the weights file exists")
    p.set_defaults(func=lambda a: print(pretrain(a.backbone, a.weights_dir, PretrainRecipe(epochs=a.epochs), a.force)))
