"""A report table: raw values for CSV (full precision), rounded and combined cells for Markdown.

CSV keeps one number per column (``acc``, ``acc_lo``, ``acc_hi``); Markdown may show fewer columns
(``md_columns``) and build a cell from several (``md_cells``: ``acc`` as ``85.00 ± 0.42``), so a reader sees the
interval where the mean is and a script still gets every number.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]


@dataclass
class Table:
    """One table: ``key`` names its files, ``columns`` and ``rows`` hold raw values (``None`` = empty)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    md_columns: list[str] | None = None
    """Columns shown in Markdown, in order (default: all)."""
    md_cells: dict[str, Callable[[Row], str]] = field(default_factory=dict)
    """Markdown text of a column built from the whole row (default: :func:`fmt` of the value)."""

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def records(self) -> list[Row]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def to_markdown(self) -> str:
        cols = self.md_columns or self.columns
        lines = [f"### {self.title}", "", "| " + " | ".join(cols) + " |"]
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for rec in self.records():
            cells = [self.md_cells[c](rec) if c in self.md_cells else fmt(rec.get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """Write ``<key>.md`` and ``<key>.csv``; returns both paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        md, cs = out_dir / f"{self.key}.md", out_dir / f"{self.key}.csv"
        md.write_text(self.to_markdown())
        with cs.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows([["" if v is None else v for v in r] for r in self.rows])
        return [md, cs]


def fmt(v: Any) -> str:  # noqa: ANN401 (any cell value)
    """Markdown cell: thousands separators for ints, 2 decimals for floats, scientific for tiny fractions."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.1e}"
        return f"{v:.2f}"
    return str(v)


def ci_cell(mean: str, lo: str | None = None, hi: str | None = None, n: str | None = None) -> Callable[[Row], str]:
    """A Markdown cell ``mean ± half`` from the columns ``mean``, ``lo``, ``hi`` (default ``<mean>_lo/_hi``).

    Without an interval (one seed) the cell reads ``mean (1 seed)``: never ``± 0``.
    """
    lo, hi = lo or f"{mean}_lo", hi or f"{mean}_hi"

    def cell(rec: Row) -> str:
        m = rec.get(mean)
        if m is None:
            return "—"
        if rec.get(lo) is None or rec.get(hi) is None:
            count = rec.get(n) if n else None
            return f"{m:.2f} ({count} seed)" if count == 1 else f"{m:.2f} (no interval)"
        return f"{m:.2f} ± {rec[hi] - m:.2f}"

    return cell


def interval_table(key: str, title: str, lead: list[str], keys: list[str]) -> Table:
    """A table of ``lead`` columns then, per key, ``key``, ``key_lo``, ``key_hi`` (Markdown: ``mean ± half``)."""
    cols = list(lead)
    for k in keys:
        cols += [k, f"{k}_lo", f"{k}_hi"]
    n = "seeds" if "seeds" in lead else None
    return Table(key, title, cols, md_columns=[*lead, *keys], md_cells={k: ci_cell(k, n=n) for k in keys})


def interval_values(iv: Any) -> list[Any]:  # noqa: ANN401 (stats.Interval | None)
    """``[mean, lo, hi]`` of an interval (``None`` entries when it is missing or has no interval)."""
    if iv is None:
        return [None, None, None]
    return [iv.mean, iv.lo, iv.hi]
