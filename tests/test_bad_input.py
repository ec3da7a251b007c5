"""Bad input: every case prints one clear line on stderr, exits 2, and overwrites nothing.

The table doubles as documentation of what each mistake prints (see the ids).
"""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from recast_bench.cli import main


class Evil:
    """Unpickling this would run a shell command; weights_only loading must refuse it."""

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, ("touch /tmp/recast-bench-pwned",))


def _files(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    wrong = tmp_path / "resnet_for_vit.pth"
    from recast_bench.backbones import build_backbone

    resnet, _, _ = build_backbone("resnet_tiny", allow_random_init=True)
    torch.save(resnet.state_dict(), wrong)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {"corrupt": corrupt, "evil": evil, "wrong": wrong, "blocker": blocker}


CASES = [
    # (id, method, extra overrides or CLI flags, expected fragment of the one-line message)
    ("unknown-method", "nope", [], "unknown method 'nope'; valid:"),
    ("unknown-backbone", "linear", ["--backbone", "vit_giant"], "unknown backbone 'vit_giant'; valid:"),
    ("unknown-stream", "linear", ["--stream", "seven"], "unknown stream 'seven'; valid:"),
    ("non-composable", "recast+linear", [], "cannot be combined with recast"),
    ("family-mismatch", "hat", [], "supports backbone families"),
    ("G-zero", "recast", ["method.recast.groups=0"], "groups"),
    ("n-negative", "recast", ["method.recast.templates=-1"], "templates"),
    ("K-zero", "recast", ["method.recast.sets=0"], "sets"),
    ("G-not-dividing", "recast", ["method.recast.groups=3"], "groups"),
    ("bad-target", "recast", ["method.recast.target=everything"], "target"),
    ("epochs-zero", "linear", ["trainer.epochs=0"], "trainer.epochs must be >= 1"),
    ("malformed-override", "linear", ["trainer.epochs=="], "bad override"),
    ("unknown-key", "linear", ["trainer.epoch=3"], "bad trainer config"),
    ("wrong-type", "linear", ["trainer.epochs=many"], "bad"),
    ("negative-lr", "linear", ["method.linear.lr=-0.1"], "lr must be > 0"),
    ("bad-logger", "linear", ["logger.backend=tensorboardx"], "unknown logger.backend"),
    ("unknown-task", "linear", ["stream.tasks=[syn0,syn9]"], "unknown task 'syn9'"),
    ("empty-task", "linear", ["stream.test_per_class=0"], "empty test split"),
    ("missing-dataset-root", "linear", ["--stream", "six", "stream.root=/nonexistent/datasets"], "not found"),
    ("corrupt-weights", "linear", ["backbone.weights={corrupt}"], "cannot load weights"),
    ("malicious-pickle", "linear", ["backbone.weights={evil}"], "not a safe state dict"),
    ("wrong-architecture", "linear", ["backbone.weights={wrong}"], "do not fit this architecture"),
    ("missing-weights-file", "linear", ["backbone.weights=/nonexistent/w.safetensors"], "not found"),
    ("unwritable-out", "linear", ["out={blocker}/sub"], "not writable"),
    ("nan-loss", "finetune", ["method.finetune.lr=1e30", "method.finetune.weight_decay=0"], "non-finite loss"),
]


@pytest.mark.parametrize(("case", "method", "extra", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, method, extra, needle, run_args, tmp_path, capsys):
    files = _files(tmp_path)
    out = tmp_path / "out"
    argv = run_args(method, out=out)
    argv += [a.format(**files) for a in extra]
    if case == "family-mismatch":
        argv[argv.index("--backbone") + 1] = "vit_tiny"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("recast-bench: error: ") and needle in err, err
    if case != "nan-loss":  # rejected before the output directory is created
        assert not (out / "results.json").exists()
    assert not (tmp_path.parent / "recast-bench-pwned").exists()
    import os

    assert not os.path.exists("/tmp/recast-bench-pwned"), "a malicious pickle was executed"


def test_nan_message_names_task_and_step(run_args, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(run_args("finetune", out=out, extra=["method.finetune.lr=1e30", "method.finetune.weight_decay=0"])) == 2
    err = capsys.readouterr().err
    assert "task 0 (syn0)" in err and "step" in err


def test_labels_out_of_range(run_args, tmp_path, capsys, monkeypatch):
    from torch.utils.data import TensorDataset

    from recast_bench.data import synthetic

    real = synthetic.make_split

    def bad_split(protos, per_class, noise, g):  # noqa: ANN001, ANN202
        ds = real(protos, per_class, noise, g)
        x, y = ds.tensors
        return TensorDataset(x, y + 1)  # shifts the top class past the head

    monkeypatch.setattr(synthetic, "make_split", bad_split)
    assert main(run_args("linear", out=tmp_path / "lab")) == 2
    err = capsys.readouterr().err.strip()
    assert "outside 0..2" in err and "syn0" in err and len(err.splitlines()) == 1


def test_dataset_with_missing_files(six_root, run_args, tmp_path, capsys):
    root = tmp_path / "six"
    shutil.copytree(six_root, root)
    lists = root / "CUB_200_2011" / "images.txt"
    first = lists.read_text().split()[1]
    (root / "CUB_200_2011" / "images" / first).unlink()
    argv = run_args("linear", out=tmp_path / "o") + ["--stream", "six", f"stream.root={root}", "stream.tasks=[cub200]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUB" in err


def test_existing_results_are_not_overwritten_by_a_bad_run(run_args, tmp_path, capsys):
    out = tmp_path / "keep"
    assert main(run_args("linear", out=out)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in (["trainer.epochs=0"], ["method.linear.lr=-1"], ["stream.tasks=[nope]"], ["trainer.epochs=3"]):
        assert main(run_args("linear", out=out, extra=extra)) == 2
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    capsys.readouterr()


def test_weights_only_refuses_pickled_objects(tmp_path):
    from recast_bench.backbones.weights import load_state_dict
    from recast_bench.errors import UserError

    evil = _files(tmp_path)["evil"]
    with pytest.raises(UserError, match="not a safe state dict"):
        load_state_dict(evil)
