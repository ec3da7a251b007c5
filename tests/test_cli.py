"""The CLI contract: `list`, and one clear stderr line with exit code 2 for every user mistake."""

from __future__ import annotations

import pytest

from recast_bench.cli import main


def test_list_shows_methods_backbones_streams(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "finetune" in out
    for b in ("resnet34", "vit_small", "vit_base", "vit_large", "dino_small", "vit_tiny", "resnet_tiny"):
        assert b in out
    assert "synthetic" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--method", "nope"], "unknown method 'nope'; valid:"),
        (["run", "--method", "linear+lora"], "recast+NAME"),
        (["run", "--method", "recast+"], "malformed method name"),
        (["run", "--method", "der+"], "malformed method name"),
        (["run", "--method", "linear", "--backbone", "vit_huge"], "unknown backbone 'vit_huge'; valid:"),
        (["run", "--method", "linear", "--stream", "nope"], "unknown stream 'nope'; valid:"),
        (["run", "--method", "linear", "trainer.epochs=="], "bad override"),
        (["run", "--method", "linear", "trainer.nope=1"], "bad trainer config"),
        (["run", "--method", "linear", "method.linear.nope=1"], "bad method.linear config"),
        (["run", "--method", "linear", "trainer.epochs=abc"], "bad"),
        (["run", "--method", "linear", "method.linear.lr=-1"], "lr must be > 0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle, capsys, tmp_path):
    argv = [*argv, f"out={tmp_path / 'o'}"] if argv[0] == "run" else argv
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists(), "a rejected run must not create its output directory"


def test_missing_weights_message_says_what_to_put_where(capsys, tmp_path):
    assert main(["run", "--method", "linear", "--backbone", "vit_small", "--out", str(tmp_path / "o"),
                 f"paths.data_dir={tmp_path}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no weights for backbone vit_small" in err and "vit_small.safetensors" in err


def test_weights_for_wrong_architecture_are_refused(capsys, tmp_path):
    from safetensors.torch import save_file

    from recast_bench.backbones import build_backbone

    resnet, _, _ = build_backbone("resnet_tiny", allow_random_init=True)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(f))
    assert main(["run", "--method", "linear", "--backbone", "vit_tiny", "--out", str(tmp_path / "o"),
                 f"backbone.weights={f}"]) == 2  # fmt: skip
    assert "do not fit this architecture" in capsys.readouterr().err


def test_paper_spelling_der_plus_plus_is_an_alias():
    from recast_bench.registry import parse_method_name

    assert parse_method_name("DER++") == ("derpp",)
    assert parse_method_name("recast+adaptformer") == ("recast", "adaptformer")


def test_list_verbose_describes_every_method_and_lists_every_stream(capsys):
    from recast_bench.config import CONF_DIR
    from recast_bench.registry import METHODS

    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "module docstring" not in out and "``" not in out
    streams = out.splitlines()[2].split()[1:]
    assert streams == sorted(p.stem for p in (CONF_DIR / "stream").glob("*.yaml"))
    assert {"six", "six_pooled", "six_quick", "six_reversed", "six_permuted", "synthetic"} <= set(streams)
    described = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for name in METHODS.names():
        line = described[name]
        description = line.split("isolates=")[1].split(None, 1)[1]
        assert len(description) > 20, f"{name} has no real description: {line!r}"
    assert "rank-1 LoRA" in described["melo"] and "fine-tuning" in described["finetune"].lower()


def _all_parsers():
    import argparse

    from recast_bench.cli import build_parser

    todo = [("recast-bench", build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]


def test_every_help_is_written_for_users():
    """No reST markup, no module docstrings as descriptions, and every subcommand has a description."""
    parsers = dict(_all_parsers())
    for cmd in ("run", "list", "export", "pack", "predict", "mimic", "report", "data", "perf", "demo", "pretrain"):
        assert f"recast-bench {cmd}" in parsers, cmd
    for name, parser in parsers.items():
        text = parser.format_help()
        assert "``" not in text, f"{name} --help shows reST double backticks"
        assert ":class:" not in text and ":func:" not in text, name
        assert "subcommand" not in (parser.description or "").lower(), f"{name}: a module docstring as description"
        assert parser.description, f"{name} --help has no description"


def test_paths_are_never_parsed_as_overrides(run_args, tmp_path):
    """``--out``, ``--data-dir`` and ``--weights`` take any legal file name: '=', ',' and spaces included."""
    import json

    from recast_bench.cli import build_parser, run_config

    out = tmp_path / "runs" / "lr=2e-3, bs=8 x"
    argv = [a for a in run_args(out=out) if not a.startswith("paths.data_dir=")]  # given as --data-dir below
    data = tmp_path / "data=1, y"
    assert main([*argv, "--data-dir", str(data)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["out"] == str(out) and res["config"]["paths"]["data_dir"] == str(data)
    weights = tmp_path / "w=1, z.safetensors"
    args = build_parser().parse_args(["run", "--method", "linear", "--weights", str(weights), "--out", str(out)])
    assert run_config(args).backbone.weights == str(weights)


def test_overrides_are_hydra_syntax_set_after_composition():
    """Group choices go to Hydra; ``key=value`` is parsed by Hydra's grammar and set on the composed config."""
    from recast_bench.config import compose_config, split_overrides

    hydra, values = split_overrides(["trainer=tiny", "trainer.epochs=3", "++x.y=1", "stream.tasks=[a,b]", "seed=7"])
    assert hydra == ["trainer=tiny", "++x.y=1"]
    assert values == {"trainer.epochs": 3, "stream.tasks": ["a", "b"], "seed": 7}
    cfg = compose_config(["method=[linear]", "trainer=tiny", "trainer.epochs=3"], values={"trainer.epochs": 9})
    assert cfg.trainer.epochs == 3 and cfg.trainer.batch_size == 16, "an override wins over a path option's value"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.epochs=-3", "trainer.epochs must be >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size must be >= 1"),
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size must be >= 1"),
        ("trainer.lr_step_epochs=0", "trainer.lr_step_epochs must be >= 1"),
        ("trainer.lr_gamma=0", "trainer.lr_gamma must be > 0"),
        ("trainer.grad_clip=-1", "trainer.grad_clip must be > 0"),
        ("trainer.precision=17", "trainer.precision must be one of"),
        ("trainer.strategy=ddpp", "trainer.strategy must be auto or a Lightning strategy"),
        ("trainer.accelerator=quantum", "trainer.accelerator must be one of"),
        ("trainer.profile=fast", "trainer.profile must be one of"),
        ("trainer.devices=0", "trainer.devices must be"),
        ("trainer.num_workers=-1", "trainer.num_workers must be >= 0"),
        ("trainer.matmul_precision=low", "trainer.matmul_precision must be one of"),
        ("trainer.deterministic=maybe", "trainer.deterministic must be true, false or warn"),
        ("trainer.compile_backend=nope", "trainer.compile_backend must be one of"),
        ("stream.val_fraction=1.5", "stream.val_fraction must be in (0, 1)"),
        ("stream.pooled_fractions=[0.5,0.5,0.5]", "stream.pooled_fractions must be 3 positive"),
        ("stream.split=random", "stream.split must be one of"),
        ("backbone.image_size=4", "backbone.image_size must be >= 8"),
        ("logger.mode=loud", "logger.mode must be one of"),
        ("seed=-1", "seed must be"),
        ("trainer.epochs=1,2", "is a sweep"),
    ],
)
def test_nonsense_values_are_one_line_exit_2(override, needle, capsys, tmp_path):
    assert main(["run", "--method", "linear", "--out", str(tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_trainer_choices_are_lightnings():
    """The names TrainerConfig accepts without importing Lightning are Lightning's own."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from recast_bench.config import ACCELERATORS, PRECISIONS, STRATEGIES

    assert set(STRATEGIES) == {"auto", *StrategyRegistry.available_strategies()}
    assert set(PRECISIONS) == {*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)}
    assert set(AcceleratorRegistry.available_accelerators()) <= set(ACCELERATORS)


@pytest.mark.parametrize(
    ("entry", "name", "variant", "overrides"),
    [
        ("recast", "recast", None, []),
        ("recast@svd", "recast", "svd", ["method.recast.variant=svd"]),
        ("recast+rosa@full", "recast+rosa", "full", ["method.rosa.variant=full"]),
        (" adaptformer@authors ", "adaptformer", "authors", ["method.adaptformer.variant=authors"]),
    ],
)
def test_parse_row(entry, name, variant, overrides):
    from recast_bench.protocol.rows import parse_row

    row = parse_row(entry)
    assert (row.name, row.variant, row.variant_overrides(), row.id) == (name, variant, overrides, entry.strip())


@pytest.mark.parametrize("entry", ["recast@", "@svd", "recast@a@b", "recast@s=1", ""])
def test_parse_row_refuses_malformed_entries(entry):
    from recast_bench.errors import UserError
    from recast_bench.protocol.rows import parse_row

    with pytest.raises(UserError, match="malformed"):
        parse_row(entry)
