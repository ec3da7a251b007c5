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
