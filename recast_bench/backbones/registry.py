"""Backbone specs: how to build each architecture and where its weights are expected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """A buildable backbone. ``build()`` returns a module mapping images to ``[B, num_features]``."""

    name: str
    family: str
    """``vit`` or ``resnet``: decides which surgery methods apply."""
    image_size: int
    build: Callable[[], nn.Module]
    source: str
    """Where to get the pretrained weight file, for the error message when it is missing."""
    ignore_prefixes: tuple[str, ...] = ("head.", "fc.")
    """Classifier keys of the pretrained file that are dropped (every task gets its own head)."""
