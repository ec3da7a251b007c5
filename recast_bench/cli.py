"""The recast-bench console script: parses arguments, composes the config, calls library functions.

Every user mistake surfaces as one line on stderr and exit code 2 (see recast_bench.errors.UserError).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from recast_bench.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Subcommands owned by other modules: each exposes ``add_parser(subparsers)`` setting ``func`` on its parser.
SUBCOMMAND_MODULES = (
    "recast_bench.pretrain",
    "recast_bench.demo",
    "recast_bench.recast.cli",
    "recast_bench.data.cli",
    "recast_bench.report.cli",
    "recast_bench.report.leaderboard",
    "recast_bench.report.dashboard",
    "recast_bench.perf",
    "recast_bench.cost",
    "recast_bench.deploy.cli",
)

DESCRIPTION = (
    "RECAST (ICLR 2025) and its continual-learning baselines on one task-incremental benchmark: train a method over "
    "a stream of tasks, report it beside the paper, and ship a learned task (export, pack, predict)."
)
EPILOG = "Run 'recast-bench COMMAND --help' for a command's options; 'recast-bench list -v' describes every method."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print usage too)
        raise UserError(message)


def build_run_overrides(args: argparse.Namespace, stream: list[str]) -> list[str]:
    """``run``'s names as Hydra overrides: method parts and variant, backbone, ``stream`` (the overrides
    :func:`recast_bench.data.streamfile.stream_overrides` made of ``--stream``), seed, then the user's.

    ``--method NAME@VARIANT`` is split by :func:`recast_bench.protocol.rows.parse_row` and its name by
    :func:`recast_bench.registry.parse_method_name`; paths are never overrides (see :func:`run_values`).
    """
    from recast_bench.protocol.rows import Row, parse_row
    from recast_bench.registry import parse_method_name

    row = parse_row(args.method)
    parts = parse_method_name(row.name)
    name = "+".join(parts)
    ov = [f"method=[{','.join(parts)}]", f"method_name={name}", *Row(name, row.variant).variant_overrides()]
    if args.backbone:
        ov.append(f"backbone={args.backbone}")
    ov += stream  # a stream file's path never becomes an override
    if args.seed is not None:
        ov.append(f"seed={args.seed}")
    return ov + list(args.overrides)


def run_values(args: argparse.Namespace) -> dict[str, str]:
    """``run``'s path options, set on the composed config as they are: any legal file name works."""
    keys = {"out": "out", "weights": "backbone.weights", "data_dir": "paths.data_dir"}
    return {key: str(getattr(args, opt)) for opt, key in keys.items() if getattr(args, opt, None)}


def run_config(args: argparse.Namespace) -> DictConfig:
    """The composed, validated config of a ``run`` command line (the card applied, nothing built yet)."""
    from recast_bench.config import compose_config
    from recast_bench.data.streamfile import is_stream_path, stream_overrides

    _check_group_option("backbone", args.backbone)
    values = run_values(args)
    stream: list[str] = []
    if args.stream and is_stream_path(args.stream):
        stream, path = stream_overrides(args.stream)  # read and checked once: a bad stream file is one line
        values["stream.file"] = str(path)
    else:
        _check_group_option("stream", args.stream)
        stream = stream_overrides(args.stream)[0] if args.stream else []
    overrides = build_run_overrides(args, stream)
    if args.experiment:
        overrides.insert(0, f"experiment={args.experiment}")  # defaults: optional experiment
    return compose_config(overrides, values=values)


def config_options(group: str) -> list[str]:
    """Every value of a config group: its conf/GROUP/*.yaml files (for streams, more than the registered builders)."""
    from recast_bench.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_group_option(group: str, name: str | None) -> None:
    if name is None:
        return
    options = config_options(group)
    if name not in options:
        raise UserError(f"unknown {group} {name!r}; valid: {', '.join(options)}")


def cmd_run(args: argparse.Namespace) -> int:
    from recast_bench.engine.loop import run

    quiet_libraries()  # here, not in main(): commands that do not train should not pay Lightning's import
    res = run(run_config(args))
    print_summary([res])
    return 0


def method_description(cls: type) -> str:
    """One line for ``list -v``: the class docstring's first line, or its module's when the class defers to it."""
    import inspect

    def first_line(doc: str | None) -> str:
        line = (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""
        return line.replace("``", "").replace(":class:", "").replace("`", "")

    own = first_line(cls.__dict__.get("__doc__"))
    if own and "module docstring" not in own:
        return own
    module = inspect.getmodule(cls)
    return first_line(module.__doc__ if module else None) or own


def cmd_list(args: argparse.Namespace) -> int:
    from recast_bench.registry import BACKBONES, METHODS, all_method_names, load_all

    load_all()
    print("methods:   " + " ".join(all_method_names()))
    print("backbones: " + " ".join(BACKBONES.names()))
    print("streams:   " + " ".join(config_options("stream")))
    if args.verbose:
        print()
        for name in METHODS.names():
            cls = METHODS.get(name)
            families = ",".join(cls.families)
            print(f"  {name:<12} {families:<11} isolates={cls.isolates_tasks!s:<5}  {method_description(cls)}")
        print("  recast+X     RECAST generates the weights and X adapts them; both train per task "
              "(X: any method above whose layers take a generated weight)")  # fmt: skip
    return 0


def print_summary(results: list[dict]) -> None:
    """One row per run: average accuracy, backward transfer, per-task parameters and bytes, time."""
    header = f"{'method':<22}{'backbone':<12}{'avg acc':>9}{'bwt':>8}{'params/task':>13}{'bytes/task':>12}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        params = max((p for p in r["trainable_params_per_task"] if p is not None), default=0)
        size = max((b for b in r["bytes_per_task"] if b is not None), default=0)
        avg = r["avg_acc"] if r["avg_acc"] is not None else float("nan")
        bwt = r["bwt"] if r["bwt"] is not None else float("nan")
        print(f"{r['method']:<22}{r['backbone']:<12}{avg:>9.2f}{bwt:>8.2f}{params:>13,}{size:>12,}{r['wall_s']:>9.1f}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recast-bench", description=DESCRIPTION, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    lp = sub.add_parser("list", help="registered methods, backbones and streams")
    lp.add_argument("-v", "--verbose", action="store_true", help="describe each method in one line")
    lp.set_defaults(func=cmd_list)

    rp = sub.add_parser("run", help="run one method over a task stream (resumes an existing --out)")
    rp.add_argument(
        "--method", required=True, help="a method name or recast+NAME, optionally @VARIANT (a bench row: recast@svd)"
    )
    rp.add_argument("--backbone", help="backbone config (conf/backbone/)")
    rp.add_argument("--stream", help="stream config (conf/stream/) or a stream file of your own tasks (PATH.yaml)")
    rp.add_argument("--out", help="output directory (default runs/<method>-<backbone>-<stream>-s<seed>)")
    rp.add_argument("--weights", help="backbone weight file (default: DATA_DIR/weights/<backbone>.*)")
    rp.add_argument("--data-dir", help="data root: datasets, weights and cache (default: data)")
    rp.add_argument("--seed", type=int, help="random seed (default 42; the paper uses 42, 1998, 3142592)")
    rp.add_argument("--experiment", help="an entry of conf/experiment/, e.g. recast_gnk")
    rp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.epochs=5 method.recast.groups=3")
    rp.set_defaults(func=cmd_run)

    for mod in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue  # that part of the project is not installed in this checkout
            raise
        module.add_parser(sub)
    describe_subcommands(sub)
    return p


def describe_subcommands(sub: argparse._SubParsersAction) -> None:
    """A subcommand without its own description shows its one-line help as the description of its --help."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        if not parser.description and helps.get(name):
            text = helps[name]
            parser.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                describe_subcommands(action)


def quiet_libraries() -> None:
    """Keep stderr for our own progress lines: Lightning's device banners and tips repeat for every task."""
    import logging
    import warnings

    import lightning  # noqa: F401  (configures its loggers on import; lower them afterwards)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")  # never reach for the network unless the user asks
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # Overrides may come before or after options (`run ... k=v --stream six k2=v2`); argparse cannot
        # intermix positionals with subparsers, so leftover `key=value` tokens of `run` are overrides too.
        if extra and getattr(args, "func", None) is cmd_run and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"recast-bench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recast-bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
