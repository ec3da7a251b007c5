"""Apply a run's protocol card to its composed config, beneath everything the user chose.

Precedence, lowest first: the dataclass defaults, the card, the group yaml files (``conf/``), the experiment, the
command line. Group yaml files and overrides hold only the keys they set, so a card value is written exactly where
no yaml or override has set that key; what the user sets always wins.

The resolved config then records ``protocol``: the card id, the keys the user (or a yaml file) set to something
else (``overridden``), and card keys this checkout's method or trainer does not have yet (``unapplied``), so
``results.json`` says how far a run is from the paper's row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recast_bench.protocol.cards import Card, find

OFF = ("none", "off", "false")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _plain(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | None):
        return float(a) == float(b)
    return a == b


def card_for(cfg: DictConfig) -> Card | None:
    """The card of this run (method name, backbone family, and any ``variant`` a method part sets)."""
    from recast_bench.backbones import get_spec

    name = str(cfg.get("method_name") or "")
    try:
        family = get_spec(str(cfg.backbone.name)).family
    except Exception:  # unknown backbone: the run fails later with the registry's own message
        return None
    methods = cfg.get("method") or {}
    variants = [(methods.get(p) or {}).get("variant") for p in reversed(name.split("+"))]
    return find(name, family, [str(v) for v in variants if v is not None])


def apply_card(cfg: DictConfig) -> Card | None:
    """Fill ``cfg.trainer`` and ``cfg.method.<part>`` from the run's card where nothing else set the key.

    ``cfg`` is Hydra's composed config before group validation (struct mode off). ``++protocol.card=none`` on the
    command line runs without a card.
    """
    from recast_bench.config import TrainerConfig
    from recast_bench.registry import METHODS, load_all

    chosen = cfg.get("protocol")
    if isinstance(chosen, DictConfig) and str(chosen.get("card")).lower() in OFF:
        cfg.protocol = {"card": None, "overridden": [], "unapplied": []}
        return None
    card = card_for(cfg)
    if card is None:
        cfg.protocol = {"card": None, "overridden": [], "unapplied": []}
        return None
    load_all()
    overridden, unapplied = [], []
    for key, val in card.values.items():
        head, *rest = key.split(".")
        if head == "mimic":
            continue
        if head == "trainer":
            group, fld, known = "trainer", rest[0], _fields(TrainerConfig)
        else:
            part, fld = rest
            if part not in METHODS:
                unapplied.append(key)
                continue
            group, known = part, _fields(METHODS.get(part).Config)
        parent = cfg if group == "trainer" else cfg.method
        if parent.get(group) is None:  # e.g. ``linear: {}`` composes to None
            parent[group] = {}
        node = parent[group]
        if fld not in known:
            if val.apply:
                unapplied.append(key)
            continue
        if not val.apply:  # set by a variant's preset (null in a yaml: "from the variant"); only a departure counts
            if fld in node and node[fld] is not None and not _same(node[fld], val.value):
                overridden.append(key)
            continue
        if fld in node:
            if not _same(node[fld], val.value):
                overridden.append(key)
        else:
            node[fld] = val.value
    cfg.protocol = {"card": card.id, "table": card.table, "overridden": overridden, "unapplied": unapplied}
    return card
