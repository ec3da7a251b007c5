"""The export, pack, predict and evaluate subcommands: thin wrappers over recast_bench.deploy."""

from __future__ import annotations

import argparse
import json
import sys

# recast_bench.deploy.agnostic.RULES, spelled out so that --help does not import torch (a test keeps them equal)
RULE_NAMES = ("max_softmax", "min_entropy", "max_logit")


def add_parser(subparsers) -> None:  # noqa: ANN001 (argparse's private _SubParsersAction)
    e = subparsers.add_parser(
        "export",
        help="export one task of a finished run for plain timm/torchvision (no recast-bench needed)",
        description="Export one task of a finished run: adapters that fold exactly are merged into the backbone and "
        "written with the task's head as a timm/torchvision state dict (model.safetensors); methods that add "
        "computation (AdaptFormer, CLR, HAT) become a torch.export program (model.pt2). model.json and README.txt "
        "say how to load it in five lines, with the class names and the preprocessing.",
    )
    e.add_argument("run", metavar="RUN", help="a finished run directory (holds results.json)")
    e.add_argument("--task", required=True, help="the task to export, by name (see the run's results.json)")
    e.add_argument("--out", required=True, help="output directory (refused if it exists, unless --force)")
    e.add_argument("--force", action="store_true", help="replace an existing output directory")
    e.set_defaults(func=cmd_export)

    k = subparsers.add_parser(
        "pack",
        help="write every task's own state and head of a run into one file",
        description="Write a task pack: every task's own state (RECAST: its coefficients) and head in one "
        "safetensors file, with the task and class names. Load it beside the run's shared backbone with "
        "recast_bench.load_run(RUN, pack=FILE) and switch tasks by name.",
    )
    k.add_argument("run", metavar="RUN", help="a finished run directory (holds results.json)")
    k.add_argument("--out", required=True, help="the pack file to write, e.g. tasks.safetensors")
    k.add_argument("--force", action="store_true", help="replace an existing pack file")
    k.set_defaults(func=cmd_pack)

    p = subparsers.add_parser(
        "predict",
        help="classify images with one task of a finished run: top-k class names and probabilities",
        description="Classify images with one task of a finished run. Images are resized, cropped and normalised "
        "as in evaluation; the top-k classes are printed with their probabilities, using the dataset's class names.",
    )
    p.add_argument("run", metavar="RUN", help="a finished run directory (holds results.json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    p.add_argument(
        "--task", required=True, help="the task whose head classifies the images, by name; 'auto' chooses per image"
    )
    p.add_argument("--rule", default="max_softmax", choices=RULE_NAMES,
                   help="how --task auto chooses (default: max_softmax; see README 'Your own tasks')")  # fmt: skip
    p.add_argument("--top-k", type=int, default=5, help="how many classes to print per image (default: 5)")
    p.add_argument("--pack", default=None, help="take the task states from this task pack instead of RUN/tasks/")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_predict)
    v = subparsers.add_parser(
        "evaluate",
        help="task-agnostic accuracy of a finished run (the task not given), recorded in its results.json",
        description="Score every task's test images under every task's head (each under its own state, one switch "
        "per task), choose the task by --rule, and record task-id accuracy and task-agnostic accuracy (right task "
        "and right class) in RUN/results.json as task_agnostic, beside the task-aware accuracy matrix. Refused when "
        "the run's data changed since it ran (split hashes).",
    )
    v.add_argument("run", metavar="RUN", help="a finished run directory (holds results.json)")
    v.add_argument("--rule", default="max_softmax", choices=RULE_NAMES, help="how the task is chosen (max_softmax)")
    v.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v.set_defaults(func=cmd_evaluate)


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recast_bench.deploy import load_run
    from recast_bench.deploy.export import check_out_dir, export_task

    _quiet()
    check_out_dir(Path(args.out), args.force)  # before the (slow) model rebuild
    run = load_run(args.run)
    meta = export_task(run, args.task, args.out, force=args.force)
    what = meta.get("weights") or meta.get("program")
    print(f"{args.out}/{what}: task {meta['task']} as {meta['format']} (checked: max logit difference "
          f"{meta['check']['max_abs_logit_diff']:.2g}); load it as shown in {args.out}/README.txt")  # fmt: skip
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recast_bench.deploy import load_run
    from recast_bench.deploy.pack import check_out_file, write_pack

    _quiet()
    check_out_file(Path(args.out), args.force)  # before the (slow) model rebuild
    run = load_run(args.run)
    info = write_pack(run, args.out, force=args.force)
    print(
        f"{args.out}: {info['tasks']} tasks, {info['file_bytes']:,} bytes ({info['file_bytes_per_task']:,.0f} per task)"
    )
    for name, sizes in info["per_task"].items():
        print(f"  {name:<16} state {sizes['state_bytes']:>12,} B   head {sizes['head_bytes']:>12,} B")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from recast_bench.deploy import load_run

    _quiet()
    run = load_run(args.run, pack=args.pack)
    preds = run.predict(list(args.images), task=args.task, top_k=args.top_k, rule=args.rule)
    if args.task == "auto":
        return _print_auto(args, preds)
    if args.json:
        print(json.dumps([{"image": img, "top": [{"class": c, "prob": p} for c, p in pred]}
                          for img, pred in zip(args.images, preds)], indent=2))  # fmt: skip
        return 0
    for img, pred in zip(args.images, preds):
        print(img)
        for c, prob in pred:
            print(f"  {prob:7.2%}  {c}")
    sys.stdout.flush()
    return 0


def _print_auto(args: argparse.Namespace, preds: list) -> int:
    if args.json:
        print(json.dumps([{"image": img, "task": p.task, "rule": args.rule, "score": p.score, "scores": p.scores,
                           "top": [{"class": c, "prob": q} for c, q in p.top]}
                          for img, p in zip(args.images, preds)], indent=2))  # fmt: skip
        return 0
    for img, p in zip(args.images, preds):
        others = ", ".join(f"{t} {s:.3g}" for t, s in p.scores.items() if t != p.task)
        print(f"{img}  task {p.task} ({args.rule} {p.score:.3g}; {others or 'no other task'})")
        for c, prob in p.top:
            print(f"  {prob:7.2%}  {c}")
    sys.stdout.flush()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recast_bench.deploy.evaluate import evaluate_run, format_agnostic

    _quiet()
    out = evaluate_run(args.run, rule=args.rule, device=args.device)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(format_agnostic(out))
        print(f"recorded as task_agnostic in {args.run}/results.json")
    return 0
