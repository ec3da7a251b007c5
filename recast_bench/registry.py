"""Registries of methods, backbones and streams, filled by importing the packages that define them.

Names are lowercase and unique; registering a name twice raises, and looking up an unknown name raises a
`UserError` that lists the valid ones. A composite method name such as ``recast+adaptformer`` is parsed by
:func:`parse_method_name`, the only place that understands the ``+`` syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from recast_bench.errors import UserError

T = TypeVar("T")


class Registry:
    """A name -> object mapping with strict, helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""
        if name != name.lower() or not name or "+" in name:
            raise ValueError(f"{self.kind} name {name!r} must be lowercase, non-empty and without '+'")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if isinstance(obj, type) and hasattr(obj, "name"):
                obj.name = name  # a method class states its name here only (engine/method.py)
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


METHODS = Registry("method")
BACKBONES = Registry("backbone")
STREAMS = Registry("stream")


def load_all() -> None:
    """Import every package that registers something. Importing is the only discovery mechanism."""
    import baselines  # noqa: F401  (registers the ported and Avalanche methods)
    import recast_bench.backbones  # noqa: F401
    import recast_bench.data  # noqa: F401
    import recast_bench.recast  # noqa: F401  (registers "recast")


# Paper spellings that cannot be registry names ("+" separates composite parts).
ALIASES = {"der++": "derpp", "erace": "er-ace", "er_ace": "er-ace"}


def parse_method_name(name: str) -> tuple[str, ...]:
    """Split ``recast+adaptformer`` into ``("recast", "adaptformer")`` and check every part is registered.

    A composite is RECAST generating the backbone weights plus adapters modifying them, so only ``recast`` may
    come first and each part must declare itself composable.
    """
    load_all()
    raw = name.strip().lower()
    raw = ALIASES.get(raw, raw)
    parts = tuple(p.strip() for p in raw.split("+"))
    if not raw or any(not p for p in parts):
        raise UserError(f"malformed method name {name!r}; expected NAME or recast+NAME")
    for p in parts:
        METHODS.get(p)
    if len(parts) > 1:
        if parts[0] != "recast" or len(parts) != 2:
            raise UserError(f"composite method {name!r} must have the form recast+NAME")
        adapter = METHODS.get(parts[1])
        if not adapter.composable:
            composable = [n for n in METHODS.names() if METHODS.get(n).composable]
            raise UserError(f"method {parts[1]!r} cannot be combined with recast; combinable: {', '.join(composable)}")
    return parts


def all_method_names() -> list[str]:
    """Registered single methods plus every valid ``recast+X`` combination."""
    load_all()
    names = METHODS.names()
    combos = [f"recast+{n}" for n in names if METHODS.get(n).composable] if "recast" in names else []
    return names + combos
