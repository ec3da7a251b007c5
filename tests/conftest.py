"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
from fixtures.datasets import write_six


@pytest.fixture(scope="session")
def six_root(tmp_path_factory):
    """A data root holding tiny fake copies of the six datasets in their native formats (written once)."""
    root = tmp_path_factory.mktemp("six")
    write_six(root)
    return root
