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
