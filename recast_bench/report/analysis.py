"""One report table's rows (one backbone and stream) with their paired comparisons, computed once per report.

Every table of a backbone/stream (Tables 1/2 and 4, the tests, the metrics, the front) reads the same
:class:`TableAnalysis`, so a mark in one table and a p-value in another come from the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recast_bench.report import compare, paper
from recast_bench.report.collect import Group


@dataclass
class TableAnalysis:
    backbone: str
    stream: str
    paper_table: str
    """File stem of the paper table beside this one (``table2_vit_small``)."""
    members: list[Group]
    """The rows in the paper's order, then ours."""
    comparisons: list[compare.Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return f"{self.backbone}_{self.stream}"

    @property
    def number(self) -> str:
        """``1`` or ``2``: the paper table (Table 1: ResNet family, Table 2: ViT family)."""
        return "1" if self.paper_table.startswith("table1") else "2"

    def comparison(self, g: Group, reference: str) -> compare.Comparison | None:
        return next((c for c in self.comparisons if c.group is g and c.reference.method == reference), None)

    def reference(self, method: str) -> Group | None:
        return compare.pick_reference(self.members, method)


def paper_order(groups: list[Group], table: str) -> list[Group]:
    """Groups in the order of the paper table's rows; rows the paper lacks after them, by label."""
    order = {(r["method"], r.get("variant")): i for i, r in enumerate(paper.load(table)["rows"])}

    def key(g: Group) -> tuple:
        i = order.get((g.method, g.variant), order.get((g.method, None), len(order)))
        return (i, g.label)

    return sorted(groups, key=key)


def analyse(groups: list[Group]) -> list[TableAnalysis]:
    """One analysis per backbone and stream among the groups."""
    out = []
    for backbone, stream in sorted({(g.backbone, g.stream) for g in groups}):
        table = paper.main_table_for(backbone)
        members = paper_order([g for g in groups if (g.backbone, g.stream) == (backbone, stream)], table)
        comps, notes = compare.table_comparisons(members)
        tasks = {tuple(g.tasks) for g in members}
        if len(tasks) > 1:
            notes.append(
                f"rows of {backbone}/{stream} ran {len(tasks)} different task lists: rows are compared only "
                "with references that ran the same tasks"
            )
        out.append(TableAnalysis(backbone, stream, table, members, comps, notes))
    return out
