"""The paper's reported numbers (RECAST, ICLR 2025), shipped as JSON in ``paper_numbers/``.

Each table file holds rows keyed by our registry's method names (plus ``variant`` where the paper reports one
method twice, e.g. RoSA "spa_mlp" and "full"). Lookups here are the only place that matches our runs to them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

# Backbones our tables compare against each paper table; tiny test backbones map to the table of their family so
# that CPU runs still show the paper's column (marked as another backbone in the table's ``paper_backbone``).
TABLE_OF_BACKBONE = {"resnet34": "table1_resnet34", "vit_small": "table2_vit_small"}
FAMILY_TABLE = {"resnet": "table1_resnet34", "vit": "table2_vit_small"}


@cache
def load(name: str) -> dict:
    """One file of ``paper_numbers/`` by stem (``table1_resnet34``, ``table2_vit_small``, ``table4_per_dataset``,
    ``table5_mimicry``, ``table6_reconstruction``, ``figures``)."""
    text = resources.files("recast_bench.report").joinpath("paper_numbers", f"{name}.json").read_text()
    return json.loads(text)


def family_of(backbone: str) -> str:
    return "resnet" if backbone.startswith("resnet") else "vit"


def main_table_for(backbone: str) -> str:
    """The paper table (file stem) whose rows sit beside runs on ``backbone``."""
    return TABLE_OF_BACKBONE.get(backbone) or FAMILY_TABLE[family_of(backbone)]


def _variant_ok(row: dict, variant: str | None, rows: list[dict]) -> bool:
    if row.get("variant") == variant:
        return True
    # A run without a variant matches the method's first listed paper variant (the paper's headline setting).
    if variant is None:
        same = [r for r in rows if r["method"] == row["method"]]
        return same[0] is row
    return False


def main_row(table: str, method: str, variant: str | None) -> dict | None:
    """Paper row of Table 1 or 2 for ``method`` (+``variant``), or ``None`` when the paper has none."""
    rows = load(table)["rows"]
    for row in rows:
        if row["method"] == method and _variant_ok(row, variant, rows):
            return row
    return None


def per_dataset_row(backbone: str, method: str, variant: str | None) -> dict | None:
    """Paper Table 4 row (per-dataset accuracies) for a run, by the paper backbone of the run's family."""
    if backbone in TABLE_OF_BACKBONE:
        paper_bb = backbone
    else:
        paper_bb = "resnet34" if family_of(backbone) == "resnet" else "vit_small"
    rows = [r for r in load("table4_per_dataset")["rows"] if r["backbone"] == paper_bb]
    for row in rows:
        if row["method"] == method and _variant_ok(row, variant, rows):
            return row
    return None


def mimicry_row(backbone: str) -> dict | None:
    """Paper Table 5 row for ``backbone`` (ViT-S/B/L only)."""
    return next((r for r in load("table5_mimicry")["rows"] if r["backbone"] == backbone), None)


def reconstruction_row(backbone: str, target: str | None, loss: str) -> dict | None:
    """Paper Table 6 row for a reconstruction of ``backbone`` with ViT ``target`` and mimicry ``loss``."""
    rows = load("table6_reconstruction")["rows"]
    loss = "smoothl1" if loss == "smoothl1_noise" else loss  # the paper reports no separate noise row
    if not any(r["backbone"] == backbone for r in rows):  # tiny test backbones: the paper's row of their family
        backbone = "resnet34" if family_of(backbone) == "resnet" else "vit_small"
    for r in rows:
        if r["backbone"] == backbone and r["loss"] == loss and (r["target"] is None or r["target"] == target):
            return r
    return None
