"""Build a method (single or ``recast+X``) from its name and the composed ``method`` config."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from recast_bench.engine.method import CompositeMethod, Method
from recast_bench.errors import UserError
from recast_bench.registry import METHODS, parse_method_name


def method_config(part: str, overrides: Any) -> Any:
    """Instantiate ``part``'s Config dataclass with yaml/CLI overrides; bad keys or values raise UserError."""
    cls = METHODS.get(part)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls.Config), overrides if overrides is not None else {})
        return OmegaConf.to_object(merged)
    except ValueError as e:  # __post_init__ validation
        raise UserError(f"bad method.{part} config: {e}") from None
    except Exception as e:
        raise UserError(f"bad method.{part} config: {str(e).splitlines()[0]}") from None


def build_method(name: str, method_cfg: Any, family: str) -> Method:
    """``name`` as given on the CLI; ``method_cfg`` maps each part name to its overrides."""
    parts = parse_method_name(name)
    methods = []
    for part in parts:
        cls = METHODS.get(part)
        if family not in cls.families:
            raise UserError(f"method {part!r} supports backbone families {', '.join(cls.families)}, not {family!r}")
        sub = method_cfg.get(part) if method_cfg is not None else None
        methods.append(cls(method_config(part, sub)))
    return methods[0] if len(methods) == 1 else CompositeMethod(methods)
