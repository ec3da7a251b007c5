"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
from fixtures.datasets import write_six


@pytest.fixture(scope="session")
def six_data(tmp_path_factory):
    """``(root, counts)``: tiny fake copies of the six datasets in their native formats, written once."""
    root = tmp_path_factory.mktemp("six")
    return root, write_six(root)


@pytest.fixture(scope="session")
def six_root(six_data):
    """A data root holding the six fake datasets (read-only: copy it before changing files)."""
    return six_data[0]


# ---- engine fixtures (lead) ----------------------------------------------------------------------------------------
TINY_STREAM = [
    "stream.num_tasks=3",
    "stream.classes_per_task=[3,2,4]",
    "stream.train_per_class=12",
    "stream.val_per_class=4",
    "stream.test_per_class=6",
]
TINY_TRAINER = ["trainer=tiny", "trainer.epochs=2", "trainer.batch_size=16", "trainer.progress_bar=false"]


@pytest.fixture(autouse=True)
def _offline_and_few_threads(monkeypatch):
    """No network, and one intra-op thread: tests on 2 cores run faster without oversubscription."""
    import torch

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_args(tmp_path):
    """CLI arguments for a tiny, fast ``recast-bench run`` into a fresh directory."""

    def make(method: str = "linear", backbone: str = "vit_tiny", out=None, extra=()):  # noqa: ANN001, ANN202
        out = out or tmp_path / f"run-{method}"
        return [
            "run", "--method", method, "--backbone", backbone, "--stream", "synthetic", "--out", str(out),
            f"paths.data_dir={tmp_path / 'data'}", "logger=none", *TINY_STREAM, *TINY_TRAINER, *extra,
        ]  # fmt: skip

    return make
