"""The protocol of a paper table as a table: one line per card, the key hyperparameters with their source kinds.

Each value cell reads ``VALUE (S)`` with S the source kind: P paper, A authors' code, O official code or library,
U ours; ours are also marked ``*`` and listed in the ``flagged`` column. Counts are per task, head excluded.
"""

from __future__ import annotations

from typing import Any

from recast_bench.protocol.cards import Card, Value

MARK = {"paper": "P", "authors": "A", "official": "O", "ours": "U*"}
COLUMNS = [
    "row",
    "paper_row",
    "method",
    "variant",
    "epochs",
    "batch",
    "grad_clip",
    "lr_schedule",
    "optimizer",
    "lr",
    "weight_decay",
    "method_settings",
    "count",
    "paper_params",
    "paper_fraction",
    "our_fraction",
    "verdict",
    "measured_count",
    "flagged",
]
GENERIC = {"optimizer", "lr", "weight_decay", "momentum", "variant"}
NOTES = [
    "Source kinds: P paper, A authors' code (appledora/RECAST_ICLR25), O the method's official code (avalanche-lib "
    "for the avalanche rows), U* our own choice (flagged; the reason is in the card).",
    "count: expected per-task trainable parameters on the paper's backbone, head excluded (checked by "
    "tests/test_protocol_cards.py); our_fraction = count / P with P the pretrained model's total parameters; verdict: "
    "whether that matches the paper's fraction (within 10%) or why not.",
    "measured_count: per-task count of this report's runs of the row (any backbone of the family).",
    "Cards: recast_bench/protocol/cards/*.yaml (`python -m recast_bench.protocol show ROW --backbone B`).",
]


def cell(v: Value | None) -> str | None:
    if v is None:
        return None
    value = v.value
    if isinstance(value, list):
        value = ",".join(str(x) for x in value)
    return f"{value} ({MARK[v.source]})"


def _per_part(card: Card, fld: str) -> str | None:
    cells = []
    for part in card.parts:
        v = card.values.get(f"method.{part}.{fld}")
        if v is not None:
            cells.append(cell(v) if len(card.parts) == 1 else f"{part}: {cell(v)}")
    return "; ".join(c for c in cells if c) or None


def _schedule(card: Card) -> str | None:
    step, gamma = card.values.get("trainer.lr_step_epochs"), card.values.get("trainer.lr_gamma")
    if step is None:
        return None
    g = gamma.value if gamma is not None else 0.1
    return f"x{g} every {step.value} ({MARK[step.source]})"


def _settings(card: Card) -> str | None:
    out = []
    for key, v in card.values.items():
        head, *rest = key.split(".")
        if head == "method" and rest[1] not in GENERIC:
            name = rest[1] if len(card.parts) == 1 else f"{rest[0]}.{rest[1]}"
            out.append(f"{name}={cell(v)}")
        elif head == "mimic":
            out.append(f"mimic.{rest[0]}={cell(v)}")
    return "; ".join(out) or None


def row(card: Card, measured: int | None = None) -> list[Any]:
    """One protocol line for ``card``, in :data:`COLUMNS` order."""
    t = card.values.get
    verdict = card.verdict if card.paper_fraction is not None or card.verdict != "consistent" else None
    settings, count = _settings(card), card.count
    if card.table == "figures":  # a sweep: its experiment, swept values and the count of each point
        sweep = "; ".join(f"sweep {k}=[{','.join(str(x) for x in v)}]" for k, v in card.sweep.items())
        settings = "; ".join(s for s in (settings, sweep) if s) or None
        count = ", ".join(f"{k}: {v}" for k, v in card.counts.items()) or None
    return [
        card.id,
        card.label,
        card.method,
        card.variant or (f"experiment={card.experiment}" if card.experiment else None),
        cell(t("trainer.epochs")),
        cell(t("trainer.batch_size")),
        cell(t("trainer.grad_clip")),
        _schedule(card),
        _per_part(card, "optimizer"),
        _per_part(card, "lr"),
        _per_part(card, "weight_decay"),
        settings,
        count,
        card.paper_params,
        card.paper_fraction,
        card.fraction(),
        verdict,
        measured,
        ", ".join(k for k, v in card.values.items() if v.flagged) or None,
    ]
