"""The ``recast-bench mimic`` subcommand: Neural Mimicry of a backbone into RECAST templates and coefficients.

Writes ``OUT/recast.safetensors`` + ``OUT/recast.json`` (the artifact), ``OUT/report.json`` (weight, feature and
logit similarity, diversity metrics, seconds, memory; ImageNet top-1 with ``--imagenet-val``) and, with
``--plots``, ``OUT/plots/*.png``.
"""

from __future__ import annotations

import argparse
import json

from recast_bench.errors import UserError


def add_parser(subparsers) -> None:
    """Register ``mimic`` on the main CLI's subparsers; the parser's ``func`` is :func:`handler`."""
    p = subparsers.add_parser(
        "mimic",
        help="reconstruct a backbone as RECAST templates + coefficients (Neural Mimicry)",
        description="Neural Mimicry: reconstruct a backbone's weights as shared RECAST templates and per-module "
        "coefficients, from the weights alone (no data), and report how close the reconstruction is.",
    )
    p.add_argument("--backbone", required=True, help="registered backbone name, e.g. vit_small, resnet34")
    p.add_argument(
        "--weights", default=None, help="local weight file (default: data/weights/<backbone>.*, else random)"
    )
    p.add_argument("--weights-dir", default="data/weights")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--loss",
        default=None,
        help="smoothl1 | mse | smoothl1_noise | vae | vae_mse (default: the authors' runs, ViT smoothl1_noise, "
        "ResNet smoothl1)",
    )
    p.add_argument("--init", default="random", help="random (the paper's procedure, default) | svd (ours)")
    p.add_argument(
        "--iters", type=int, default=None, help="iterations (default: paper, ViT 1000 / ResNet 3000 / VAE 2500)"
    )
    p.add_argument("--groups", type=int, default=None, help="G (ViT; default: 2 blocks per group, 6 on ViT-S)")
    p.add_argument("--templates", type=int, default=2, help="n per bank (ViT)")
    p.add_argument("--sets", type=int, default=2, help="K coefficient sets")
    p.add_argument("--target", default="mlp", help="ViT: mlp | attn | attn+mlp (| +proj)")
    p.add_argument("--sharing", default=None, help="Figure 6a scheme: low | balanced | extreme")
    p.add_argument("--resnet-templates", type=int, default=None, help="n per ResNet stage bank (default 2,3,5,2)")
    p.add_argument("--resnet-target", default="conv1+conv2")
    p.add_argument("--imagenet-val", default=None, help="ImageNet-1k val folder (DIR/<wnid>/*.JPEG)")
    p.add_argument("--imagenet-limit", type=int, default=None, help="evaluate only the first N val images")
    p.add_argument("--cache-dir", default="data/cache", help="Neural Mimicry cache ('' disables)")
    p.add_argument("--batch-size", type=int, default=4, help="batch for the feature-similarity report")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plots", action="store_true", help="also write PNG plots (diversity, features)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``mimic``; user mistakes raise :class:`UserError` (the main CLI prints one line, exits 2)."""
    from recast_bench.recast.mimicry import MimicConfig
    from recast_bench.recast.pipeline import MimicJob, run_mimic
    from recast_bench.recast.surgery import RecastSpec

    if args.batch_size <= 0:
        raise UserError(f"--batch-size must be > 0, got {args.batch_size}")
    try:
        spec = RecastSpec(
            groups=args.groups,
            templates=args.templates,
            sets=args.sets,
            target=args.target,
            sharing=args.sharing,
            resnet_templates=args.resnet_templates,
            resnet_target=args.resnet_target,
        )
        mimic = MimicConfig(loss=args.loss, init=args.init, iters=args.iters, seed=args.seed, device=args.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    job = MimicJob(
        backbone=args.backbone,
        out=args.out,
        weights=args.weights,
        weights_dir=args.weights_dir,
        spec=spec,
        mimic=mimic,
        cache_dir=args.cache_dir or None,
        imagenet_val=args.imagenet_val,
        imagenet_limit=args.imagenet_limit,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
        plots=args.plots,
    )
    report = run_mimic(job)
    w, o = report["weight_cosine"], report["outputs"]
    summary = {
        "out": args.out,
        "per_task_params": report["per_task_params"],
        "weight_cosine_min": w["min"],
        "weight_cosine_mean": w["mean"],
        # Original vs reconstruction on ONE batch (random noise, or the first ImageNet batch): a similarity check,
        # never an accuracy; kept apart from the ImageNet top-1s below so that nobody reads it as one.
        "batch_check": {
            "images": o["images"],
            "inputs": "first imagenet-val batch" if job.imagenet_val else "random noise",
            "feature_cosine_min": o["feature_cosine_min"],
            "logits_cosine": o["logits_cosine"],
            "top1_agreement": o["top1_agreement"],
        },
        "from_cache": report["mimicry"]["from_cache"],
        "seconds": round(report["seconds"]["total"], 2),
    }
    if "imagenet" in report:  # accuracies over the whole (or --imagenet-limit) validation set
        inet = report["imagenet"]
        summary["imagenet"] = {k: inet[k] for k in ("images", "top1_original", "top1_reconstructed", "top1_agreement")}
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m recast_bench.recast.cli mimic ...``) until the main CLI wires it in."""
    import sys

    parser = argparse.ArgumentParser(prog="recast-bench")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
