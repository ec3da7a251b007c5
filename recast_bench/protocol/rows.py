"""``NAME@VARIANT``: a bench row's name, parsed here and nowhere else.

A bench entry (``make bench``, ``recast-bench run --method``, ``cost``, ``gpu-check``) is a method name, optionally
with the variant of its last part: ``recast@svd``, ``rosa@sparse_mlp``, ``recast+rosa@full``, ``adaptformer@authors``.
Running it means running the method with ``method.<last part>.variant=VARIANT``; the protocol card of that row
(``cards.find``) is then the one the run gets. The ``+`` of a composite is the registry's
(:func:`recast_bench.registry.parse_method_name` checks the parts); this module only splits the text, so that
``make`` can call it without importing torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from recast_bench.errors import UserError


@dataclass(frozen=True)
class Row:
    """One bench entry: the method's name (``recast+rosa``) and the variant of its last part (``full``) or None."""

    name: str
    variant: str | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("+"))

    @property
    def id(self) -> str:
        """The entry as written (``NAME`` or ``NAME@VARIANT``): a card's id."""
        return f"{self.name}@{self.variant}" if self.variant else self.name

    def variant_overrides(self) -> list[str]:
        """The override that selects the variant (``method.rosa.variant=full``), or none."""
        return [f"method.{self.parts[-1]}.variant={self.variant}"] if self.variant else []


def parse_row(entry: str) -> Row:
    """Split ``NAME[@VARIANT]``; a malformed entry (empty name or variant, two ``@``) is a :class:`UserError`."""
    name, at, variant = entry.strip().partition("@")
    name, variant = name.strip(), variant.strip()
    if not name or (at and (not variant or "@" in variant)):
        raise UserError(f"malformed method {entry!r}; expected NAME, recast+NAME, or either with @VARIANT")
    if at and not variant.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"malformed variant {variant!r} in {entry!r} (letters, digits, _ and - only)")
    return Row(name, variant or None)


def make_words(entries: list[str]) -> list[str]:
    """One word per entry for ``mk/bench.mk``: ``ENTRY:NAME:VARIANT_OVERRIDE:PART,PART`` (``-``: no variant)."""
    words = []
    for e in entries:
        row = parse_row(e)
        words.append(":".join([e, row.name, (row.variant_overrides() or ["-"])[0], ",".join(row.parts)]))
    return words


if __name__ == "__main__":  # python -m recast_bench.protocol.rows ENTRY...: the words mk/bench.mk reads
    try:
        print(" ".join(make_words(sys.argv[1:])))
    except UserError as e:
        print(f"recast_bench.protocol.rows: {e}", file=sys.stderr)
        sys.exit(2)
