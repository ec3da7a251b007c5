"""Find and load what ``report`` summarises: run directories (``results.json``), ``mimic`` reports
(``report.json``) and ``perf`` reports (``perf.json``), then group runs that differ only by seed.

A run's *label* is its method name plus an optional variant (``rosa[full]``): the variant distinguishes rows that
the paper reports for one method with two settings (RoSA "SpA MLP" and "Full - Att."). It comes from, in order,
``results["variant"]``, the run's protocol card (``config.protocol.card``, e.g. ``rosa@full``), the config's
top-level ``variant`` (``+variant=full`` on the command line), or a ``variant`` key in one of the method parts'
configs.
"""

from __future__ import annotations

import glob
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recast_bench.engine.results import validate
from recast_bench.errors import UserError
from recast_bench.report.schema import check_results_schema
from recast_bench.report.stats import Interval, t_interval

RESULTS = "results.json"
MIMIC = "report.json"
PERF = "perf.json"


@dataclass
class Inputs:
    """Everything found under the paths given to ``report``."""

    runs: list[dict] = field(default_factory=list)
    """``results.json`` dicts, each with ``_dir`` (its directory) added."""
    mimic: list[dict] = field(default_factory=list)
    """``report.json`` dicts of ``recast-bench mimic``, each with ``_dir``."""
    perf: list[dict] = field(default_factory=list)
    """``perf.json`` dicts, each with ``_dir``."""
    skipped: list[str] = field(default_factory=list)
    """Human-readable reasons for inputs that were found but not used."""


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def _is_mimic_report(data: dict) -> bool:
    return "diversity" in data and "weight_cosine" in data


def expand(patterns: list[str]) -> list[Path]:
    """Paths of every given directory/file, globs expanded, then every ``results.json``, ``report.json`` or
    ``perf.json`` below a directory (so ``bench/`` alone finds all its runs)."""
    found: list[Path] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat, recursive=True)) if any(c in pat for c in "*?[") else [pat]
        if not matches:
            raise UserError(f"no run directory matches {pat!r}")
        for m in matches:
            p = Path(m)
            if p.is_file():
                found.append(p)
            elif p.is_dir():
                direct = [p / n for n in (RESULTS, MIMIC, PERF) if (p / n).is_file()]
                found.extend(direct or sorted(q for n in (RESULTS, MIMIC, PERF) for q in p.rglob(n)))
            else:
                raise UserError(f"{p} does not exist")
    seen: set[Path] = set()
    unique = []
    for f in found:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def load_inputs(patterns: list[str], allow_incomplete: bool = False) -> Inputs:
    """Load runs and reports; incomplete runs are listed in ``skipped`` unless ``allow_incomplete``."""
    inp = Inputs()
    for f in expand(patterns):
        data = _read(f)
        data["_dir"] = str(f.parent)
        if f.name == PERF:
            inp.perf.append(data)
        elif f.name == MIMIC or _is_mimic_report(data):
            if not _is_mimic_report(data):
                inp.skipped.append(f"{f}: not a `recast-bench mimic` report (no diversity/weight_cosine)")
                continue
            inp.mimic.append(data)
        else:
            check_results_schema(data, f)
            try:
                validate(data)
            except ValueError as e:
                raise UserError(f"{f}: {e}") from None
            if data.get("status") != "complete" and not allow_incomplete:
                inp.skipped.append(f"{f}: run incomplete ({data.get('completed_tasks', 0)}/{len(data['tasks'])} tasks)")
                continue
            inp.runs.append(data)
    if not (inp.runs or inp.mimic or inp.perf):
        raise UserError("no complete results.json, report.json or perf.json found in the given paths")
    return inp


def variant_of(res: dict) -> str | None:
    """The run's variant (see module docstring), or ``None``."""
    if res.get("variant"):
        return str(res["variant"])
    cfg = res.get("config") or {}
    card = (cfg.get("protocol") or {}).get("card")
    if card:  # the protocol card names the row: "rosa@full" -> full, "recast" -> none (even with variant=paper)
        from recast_bench.protocol.rows import parse_row

        return parse_row(card).variant
    if cfg.get("variant"):
        return str(cfg["variant"])
    for part_cfg in (cfg.get("method") or {}).values():
        if isinstance(part_cfg, dict) and part_cfg.get("variant"):
            return str(part_cfg["variant"])
    return None


def label_of(res: dict) -> str:
    """``method[variant]{settings}``: the label of the run's group (set by :func:`group_runs`)."""
    if res.get("_label"):
        return str(res["_label"])
    v = variant_of(res)
    return f"{res['method']}[{v}]" if v else str(res["method"])


# Config keys that differ between seeds of one setting, or only change where/how a run is shown.
# Keys that say where or how a run executed, not what it computed: seeds of one setting run on different machines
# (other worker counts, pinning, profile names, data roots) still group together. Precision and determinism are
# settings.
_NOT_SETTINGS = {
    "seed", "out", "logger", "paths", "progress_bar", "num_workers", "persistent_workers", "pin_memory", "profile",
    "resolved_profile", "method_name", "protocol", "root",
}  # fmt: skip


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k not in _NOT_SETTINGS:
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_of(res: dict) -> dict[str, Any]:
    """The run's config flattened to dotted keys, without the seed and display-only keys."""
    return _flat(res.get("config") or {})


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return None, None
    # Sample std (n-1), as "standard deviation over 3 seeds" is usually computed; None for one seed.
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _max_known(xs: list[Any]) -> Any:
    vals = [x for x in xs if x is not None]
    return max(vals) if vals else None


@dataclass
class Group:
    """Runs of one method (+variant) on one backbone and stream, over seeds."""

    method: str
    variant: str | None
    backbone: str
    stream: str
    runs: list[dict]
    tag: str | None = None
    """The settings that tell this group from others of the same method (``target=attn,groups=2``)."""

    @property
    def label(self) -> str:
        base = f"{self.method}[{self.variant}]" if self.variant else self.method
        return f"{base}{{{self.tag}}}" if self.tag else base

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r["seed"]) for r in self.runs)

    @property
    def tasks(self) -> list[str]:
        return list(self.runs[0]["tasks"])

    def by_seed(self) -> dict[int, dict]:
        return {int(r["seed"]): r for r in self.runs}

    def interval(self, key: str = "avg_acc") -> Interval | None:
        """Mean over seeds of a run-level number with its 95 % t interval (none for one seed)."""
        return t_interval([r.get(key) for r in self.runs])

    def task_interval(self, j: int) -> Interval | None:
        """Mean over seeds of task j's final accuracy with its 95 % t interval."""
        return t_interval([r["final_acc"][j] if j < len(r["final_acc"]) else None for r in self.runs])

    def acc(self) -> tuple[float | None, float | None]:
        """Mean and std over seeds of the average final accuracy."""
        return _mean_std([r["avg_acc"] for r in self.runs])

    def bwt(self) -> float | None:
        return _mean_std([r["bwt"] for r in self.runs])[0]

    def task_acc(self) -> list[tuple[float | None, float | None]]:
        """Per task: mean and std over seeds of the final accuracy."""
        return [_mean_std([r["final_acc"][j] for r in self.runs]) for j in range(len(self.tasks))]

    def params_per_task(self) -> int | None:
        """Largest per-task trainable count (head excluded) over tasks and seeds: the cost of the costliest task."""
        return _max_known([p for r in self.runs for p in r["trainable_params_per_task"]])

    def head_params_per_task(self) -> int | None:
        return _max_known([p for r in self.runs for p in r["head_params_per_task"]])

    def bytes_per_task(self) -> int | None:
        return _max_known([b for r in self.runs for b in r["bytes_per_task"]])

    def backbone_params(self) -> int | None:
        return _max_known([r.get("backbone_params") for r in self.runs])

    def wall_s(self) -> float | None:
        return _mean_std([float(r["wall_s"]) for r in self.runs])[0]

    def peak_mem_mb(self) -> float | None:
        return _max_known([r.get("peak_mem_mb") for r in self.runs])


def group_runs(runs: list[dict]) -> list[Group]:
    """Group runs that differ only by seed: same method, variant, backbone, stream and settings.

    Groups of one method with different settings (a G/n/K sweep) get a ``tag`` naming the settings that differ.
    Two runs with the same seed and settings keep the first.
    """
    groups: dict[tuple, Group] = {}
    for r in runs:
        settings = json.dumps(settings_of(r), sort_keys=True, default=str)
        key = (r["method"], variant_of(r), r["backbone"], r["stream"], settings)
        g = groups.setdefault(key, Group(key[0], key[1], key[2], key[3], []))
        if any(int(o["seed"]) == int(r["seed"]) for o in g.runs):
            continue
        g.runs.append(r)
    by_method: dict[tuple, list[Group]] = {}
    for g in groups.values():
        by_method.setdefault((g.method, g.variant, g.backbone, g.stream), []).append(g)
    for clash in by_method.values():
        if len(clash) < 2:
            continue
        flats = [settings_of(g.runs[0]) for g in clash]
        keys = sorted({k for f in flats for k in f if len({str(x.get(k)) for x in flats}) > 1})
        for g, f in zip(clash, flats):
            g.tag = ",".join(f"{k.rsplit('.', 1)[-1]}={f.get(k)}" for k in keys)
    for g in groups.values():
        for r in g.runs:
            r["_label"] = g.label
    return list(groups.values())


def recast_settings(res: dict) -> dict | None:
    """G, n, K and target of a run with a RECAST part, defaults and presets resolved; ``None`` without one."""
    cfg = (res.get("config") or {}).get("method") or {}
    if "recast" not in str(res.get("method", "")).split("+"):
        return None
    raw = dict(cfg.get("recast") or {})
    try:  # resolve the dataclass defaults and presets the run used (yaml only holds overrides)
        from recast_bench.engine.build import method_config
        from recast_bench.registry import load_all

        load_all()
        c = method_config("recast", raw)
        return {
            "groups": c.groups,
            "templates": c.templates,
            "sets": c.sets,
            "target": c.target,
            "sharing": c.sharing,
            "mimic_loss": c.mimic_loss,
        }
    except Exception:  # an older/newer RECAST config: fall back to what the run recorded
        keys = ("groups", "templates", "sets", "target", "sharing", "mimic_loss")
        return {k: raw.get(k) for k in keys}
