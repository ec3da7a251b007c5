"""Which ``results.json`` schema versions ``report`` reads, and what each run records beyond schema 1.

Schema 1 is the original file; schema 2 adds ``timing``, ``task_switch_ms``, ``compile``, ``git_commit`` and
``versions.avalanche``; ``task_agnostic`` and ``split_hashes`` are optional keys of either. A run also may or may
not have ``predictions.safetensors`` beside its ``results.json``. What a run lacks is skipped and the report says
which runs and why (:func:`missing_note`); a schema newer than this checkout is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from recast_bench.errors import UserError

READS = (1, 2)

# key -> (what it is, why a run may lack it, what the report skips without it)
OPTIONAL = {
    "timing": ("per-step timing", "results schema 1 has no step timing", "no img/s in the leaderboard"),
    "task_switch_ms": (
        "task-switch time",
        "results schema 1 does not time switches",
        "the front's task-switch axis is skipped",
    ),
    "git_commit": ("git commit", "results schema 1 does not record it", "leaderboard rows show no commit"),
    "compile": ("torch.compile setting", "results schema 1 does not record it", "leaderboard rows show none"),
    "versions.avalanche": ("avalanche version", "results schema 1 does not record it", "leaderboard rows show null"),
    "task_agnostic": (
        "task-agnostic accuracy",
        "the run was not evaluated without task ids",
        "only task-aware accuracy is shown",
    ),
    "split_hashes": ("split hashes", "the run does not record them", "same-data checks across rows are not made"),
}
SCHEMA_2_KEYS = ("timing", "task_switch_ms", "git_commit", "compile", "versions.avalanche")


def schema_version(data: dict) -> int:
    """The run's schema version (a file without the key is schema 1)."""
    return int(data.get("schema_version", 1))


def check_results_schema(data: dict, path: str | Path) -> int:
    """The schema version of a results dict; a version this checkout does not read is one clear line."""
    v = data.get("schema_version", 1)
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"{path}: schema_version {v!r} is not a whole number; not a recast-bench results.json")
    if v not in READS:
        newest = max(READS)
        hint = "update recast-bench to read it" if v > newest else "it predates every version this checkout reads"
        raise UserError(f"{path}: results schema_version {v}; this recast-bench reads versions 1-{newest} ({hint})")
    return v


def has(run: dict, key: str) -> bool:
    """Whether the run records ``key`` with a value (``versions.avalanche`` style paths allowed)."""
    head, _, rest = key.partition(".")
    value = run.get(head)
    if rest:
        value = value.get(rest) if isinstance(value, dict) else None
    return value is not None


def missing_note(runs: list[dict], key: str, effect: bool = True) -> str | None:
    """One line naming how many runs lack ``key``, why, and (``effect``) what that skips; ``None`` when all have it."""
    lacking = [r for r in runs if not has(r, key)]
    if not lacking:
        return None
    what, why, skips = OPTIONAL.get(key, (key, "the run does not record it", "it is not shown"))
    names = ", ".join(Path(r["_dir"]).name for r in lacking[:4]) + (", ..." if len(lacking) > 4 else "")
    old = sum(schema_version(r) < 2 for r in lacking)
    if key in SCHEMA_2_KEYS and old < len(lacking):  # schema-2 runs without it: their runner cannot record it
        why = (
            f"{why} ({old} of them); the others' runner does not record it"
            if old
            else "their runner does not record it"
        )
    line = f"{what}: not recorded by {len(lacking)} of {len(runs)} runs ({names}): {why}"
    return f"{line}; {skips}" if effect else line
