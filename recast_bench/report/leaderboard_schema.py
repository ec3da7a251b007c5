"""The leaderboard file's schema (version 1), a validator, and the reader that applies it.

A leaderboard is one JSON object::

    {"schema": "recast-bench-leaderboard", "schema_version": 1, "created_by": "...", "interval": "...",
     "rows": [OUR_ROW, ...], "reference_rows": [REFERENCE_ROW, ...], "notes": [...]}

``OUR_ROW`` (one per method x backbone x stream, aggregated over seeds) and ``REFERENCE_ROW`` (a number from the
paper or from outside, labelled with how its protocol differs) are described by :data:`OUR_FIELDS` and
:data:`REFERENCE_FIELDS`: field -> (type, required). An interval is ``{"mean", "n", "ci95": [lo, hi] | null,
"sd"}``. :func:`validate` names the first problem; :func:`read` turns it, or another schema version, into one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recast_bench.errors import UserError

NAME = "recast-bench-leaderboard"
VERSION = 1
REFERENCE_NAME = "recast-bench-reference-rows"

NUM = (int, float)
STR_OR_LIST = (str, list)
INTERVAL = "interval"
OPT_INTERVAL = "interval?"

OUR_FIELDS: dict[str, tuple[Any, bool]] = {
    "kind": (str, True),
    "label": (str, True),
    "method": (str, True),
    "variant": ((str, type(None)), True),
    "backbone": (str, True),
    "stream": (str, True),
    "tasks": (list, True),
    "seeds": (list, True),
    "acc": (INTERVAL, True),
    "task_acc": (dict, True),
    "metrics": (dict, True),
    "task_agnostic": ((dict, type(None)), True),
    "params_per_task": ((int, type(None)), True),
    "head_params_per_task": ((int, type(None)), True),
    "bytes_per_task": ((int, type(None)), True),
    "backbone_params": ((int, type(None)), True),
    "wall_s": (dict, True),
    "compute": (dict, True),
    "task_switch_ms": ((*NUM, type(None)), True),
    "protocol": (dict, True),
    "git_commit": ((*STR_OR_LIST, type(None)), True),
    "versions": (dict, True),
    "device": ((*STR_OR_LIST, type(None)), True),
    "gpu_name": ((*STR_OR_LIST, type(None)), True),
    "paper": ((dict, type(None)), True),
    "runs": (list, True),
    "results_schema": (list, True),
    "missing": (list, True),
}
REFERENCE_FIELDS: dict[str, tuple[Any, bool]] = {
    "kind": (str, True),
    "label": (str, True),
    "source": (str, True),
    "protocol_difference": (str, True),
    "method": ((str, type(None)), False),
    "backbone": ((str, type(None)), False),
    "stream": ((str, type(None)), False),
    "acc": ((*NUM, type(None)), False),
    "std": ((*NUM, type(None)), False),
    "task_acc": ((dict, type(None)), False),
    "params_per_task": ((*NUM, type(None)), False),
    "fraction": ((*NUM, type(None)), False),
    "verified": ((str, type(None)), False),
}
VERSION_KEYS = ("torch", "timm", "lightning", "avalanche")


def _type_name(t: Any) -> str:  # noqa: ANN401
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def _check_interval(v: Any, where: str, optional: bool) -> None:  # noqa: ANN401
    if v is None and optional:
        return
    if not isinstance(v, dict) or not isinstance(v.get("mean"), NUM) or not isinstance(v.get("n"), int):
        raise ValueError(f"{where}: expected an interval {{mean, n, ci95, sd}}, got {str(v)[:60]}")
    ci = v.get("ci95")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, NUM) for x in ci)):
        raise ValueError(f"{where}.ci95: expected [lo, hi] or null")
    if ci is not None and not ci[0] <= v["mean"] <= ci[1]:
        raise ValueError(f"{where}: mean {v['mean']} lies outside its ci95 {ci}")


def _check_fields(row: Any, fields: dict[str, tuple[Any, bool]], where: str) -> None:  # noqa: ANN401
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object")
    for key, (typ, required) in fields.items():
        if key not in row:
            if required:
                raise ValueError(f"{where}: missing {key!r}")
            continue
        v = row[key]
        if typ in (INTERVAL, OPT_INTERVAL):
            _check_interval(v, f"{where}.{key}", typ == OPT_INTERVAL)
        else:
            typs = typ if isinstance(typ, tuple) else (typ,)
            if (isinstance(v, bool) and bool not in typs) or not isinstance(v, typs):  # True is an int to Python
                raise ValueError(f"{where}.{key}: expected {_type_name(typ)}, got {type(v).__name__}")


def validate_reference_row(row: Any, where: str) -> None:  # noqa: ANN401
    """A reference row needs a label, its source, how its protocol differs, and a number (acc or task_acc)."""
    _check_fields(row, REFERENCE_FIELDS, where)
    if row["kind"] != "reference":
        raise ValueError(f"{where}.kind: expected 'reference'")
    if not row["protocol_difference"].strip():
        raise ValueError(f"{where}.protocol_difference: say how this row's protocol differs from ours")
    values = [row.get("acc")] + list((row.get("task_acc") or {}).values())
    if not any(isinstance(v, NUM) for v in values):
        raise ValueError(f"{where}: needs acc or task_acc")
    for v in values:
        if v is not None and not (isinstance(v, NUM) and 0.0 <= v <= 100.0):
            raise ValueError(f"{where}: accuracy {v!r} is not a percentage")


def validate_row(row: Any, where: str) -> None:  # noqa: ANN401
    """One of our rows: every field of :data:`OUR_FIELDS` with its type, intervals well formed."""
    _check_fields(row, OUR_FIELDS, where)
    if row["kind"] != "ours":
        raise ValueError(f"{where}.kind: expected 'ours'")
    if row["acc"]["n"] != len(row["seeds"]):
        raise ValueError(f"{where}: acc.n = {row['acc']['n']} but {len(row['seeds'])} seeds")
    for key, iv in list(row["task_acc"].items()) + list(row["metrics"].items()):
        _check_interval(iv, f"{where}.{key}", optional=True)
    for key in VERSION_KEYS:
        if key not in row["versions"]:
            raise ValueError(f"{where}.versions: missing {key!r} (null when not recorded)")


def validate(data: Any) -> None:  # noqa: ANN401
    """Raise ``ValueError`` naming the first problem of a leaderboard dict of :data:`VERSION`."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for key in ("rows", "reference_rows"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{key!r} must be a list")
    for i, row in enumerate(data["rows"]):
        validate_row(row, f"rows[{i}]")
    for i, row in enumerate(data["reference_rows"]):
        validate_reference_row(row, f"reference_rows[{i}]")


def _load_json(path: Path) -> Any:  # noqa: ANN401
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None


def read(path: str | Path) -> dict:
    """A leaderboard file, validated; another schema or version, or a broken row, is one :class:`UserError` line."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("schema") != NAME:
        raise UserError(f'{path} is not a recast-bench leaderboard (no "schema": "{NAME}")')
    v = data.get("schema_version")
    if v != VERSION:
        raise UserError(
            f"{path}: leaderboard schema_version {v!r}; this recast-bench reads version {VERSION} "
            "(rebuild it with `recast-bench leaderboard` from the runs)"
        )
    try:
        validate(data)
    except ValueError as e:
        raise UserError(f"{path}: invalid leaderboard: {e}") from None
    return data


def read_reference_rows(path: str | Path) -> list[dict]:
    """User reference rows: a JSON list of rows, ``{"reference_rows": [...]}``, or a leaderboard (its reference rows).

    Each row needs ``label``, ``source``, ``protocol_difference`` and ``acc`` or ``task_acc``; ``kind`` defaults to
    ``reference``.
    """
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, dict) and data.get("schema") == NAME:
        return read(path)["reference_rows"]
    if isinstance(data, dict) and data.get("schema") not in (None, REFERENCE_NAME):
        raise UserError(f"{path}: schema {data.get('schema')!r} is not a reference-rows file")
    if isinstance(data, dict) and data.get("schema_version", 1) != 1:
        raise UserError(f"{path}: reference rows schema_version {data.get('schema_version')!r}; this reads 1")
    rows = data.get("reference_rows") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UserError(f'{path}: expected a list of reference rows or {{"reference_rows": [...]}}')
    out = []
    for i, row in enumerate(rows):
        row = {"kind": "reference", **row} if isinstance(row, dict) else row
        try:
            validate_reference_row(row, f"reference_rows[{i}]")
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        out.append(row)
    return out
