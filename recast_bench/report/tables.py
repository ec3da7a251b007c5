"""Paper-format tables (Tables 1, 2, 4, 5, 6) built from our runs, with the paper's numbers beside ours.

A :class:`Table` keeps raw values (written to CSV at full precision) and renders Markdown with rounded values.
"Diff" columns are always ours minus the paper's.
"""

from __future__ import annotations

from typing import Any

from recast_bench.report import paper, stats
from recast_bench.report.analysis import TableAnalysis
from recast_bench.report.collect import Group, Inputs, label_of
from recast_bench.report.compare import mark
from recast_bench.report.table import Row, Table, ci_cell, interval_values

__all__ = ["Table"]  # re-exported: report.cli imports it from here

PAPER_BACKBONE_NAMES = {"resnet34": "ResNet-34", "vit_small": "ViT-S"}


def diff(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else ours - theirs


MAIN_COLUMNS = [
    "method",
    "seeds",
    "params_per_task",
    "params_fraction",
    "head_params_per_task",
    "bytes_per_task",
    "acc",
    "acc_lo",
    "acc_hi",
    "acc_std",
    "bwt",
    "wall_s",
    "vs_linear_seeds",
    "vs_linear_images",
    "vs_recast_seeds",
    "vs_recast_images",
    "paper_method",
    "paper_params",
    "paper_fraction",
    "paper_storage",
    "paper_acc",
    "paper_acc_std",
    "acc_diff",
    "paper_vs_ci",
]
MAIN_MD = [
    "method",
    "seeds",
    "params_per_task",
    "params_fraction",
    "bytes_per_task",
    "acc",
    "bwt",
    "vs_linear_seeds",
    "vs_linear_images",
    "vs_recast_seeds",
    "vs_recast_images",
    "paper_method",
    "paper_fraction",
    "paper_acc",
    "acc_diff",
    "paper_vs_ci",
]

TEST_NOTE = (
    "vs_<ref>_seeds: paired t-test across seeds (seed s against seed s) on average accuracy; vs_<ref>_images: "
    "paired bootstrap over test images of the seed-averaged difference, resampled within each task. Marks: better "
    "/ worse when the Holm-adjusted p < 0.05 (one Holm family per test over every comparison of this table), else "
    "within noise; n/a: the test could not be made (see the tests table and the README's notes)."
)


def _tests(ta: TableAnalysis, g: Group, ref: str) -> list[str | None]:
    c = ta.comparison(g, ref)
    if c is None:
        return [None, None]
    return [mark(c.seeds), mark(c.images)]


def _main_row(ta: TableAnalysis, g: Group) -> list[Any]:
    iv = g.interval()
    acc, std = g.acc()
    params, bb = g.params_per_task(), g.backbone_params()
    row = paper.main_row(ta.paper_table, g.method, g.variant)
    theirs = row["acc"] if row else None
    return [
        g.label,
        len(g.runs),
        params,
        (params / bb) if params is not None and bb else None,
        g.head_params_per_task(),
        g.bytes_per_task(),
        acc,
        *interval_values(iv)[1:],
        std,
        g.bwt(),
        g.wall_s(),
        *_tests(ta, g, "linear"),
        *_tests(ta, g, "recast"),
        row["label"] if row else None,
        row["learnt_params"] if row else None,
        row["fraction"] if row else None,
        row["storage"] if row else None,
        theirs,
        row["std"] if row else None,
        diff(acc, theirs),
        stats.vs_paper(iv, theirs),
    ]


def main_tables(analyses: list[TableAnalysis]) -> list[Table]:
    """Table 1 (ResNet family) / Table 2 (ViT family): one table per backbone and stream among the runs."""
    tables = []
    for ta in analyses:
        paper_bb = paper.load(ta.paper_table)["backbone"]
        t = Table(
            key=f"table{ta.number}_{ta.slug}",
            title=f"Table {ta.number} ({PAPER_BACKBONE_NAMES[paper_bb]}): ours on {ta.backbone} / {ta.stream}, "
            f"paper on {paper_bb}",
            columns=list(MAIN_COLUMNS),
            md_columns=list(MAIN_MD),
            md_cells={"acc": ci_cell("acc", n="seeds")},
        )
        t.rows = [_main_row(ta, g) for g in ta.members]
        matched = {id(paper.main_row(ta.paper_table, g.method, g.variant)) for g in ta.members}
        for row in paper.load(ta.paper_table)["rows"]:  # the paper's rows we have no run for: the table stays whole
            if id(row) not in matched:
                label = f"{row['method']}[{row['variant']}]" if row.get("variant") else row["method"]
                t.rows.append(
                    [label, 0]
                    + [None] * (MAIN_COLUMNS.index("paper_method") - 2)
                    + [row["label"], row["learnt_params"], row["fraction"], row["storage"], row["acc"], row["std"]]
                    + [None, None]
                )
        t.notes = [
            "acc: average final top-1 (%) over tasks, mean over seeds ± the half-width of its 95 % Student-t "
            "interval (n - 1 degrees of freedom; acc_lo / acc_hi in the CSV); one seed has no interval and says so. "
            "acc_std: sample std over seeds.",
            TEST_NOTE,
            "paper_vs_ci: whether the paper's number lies inside our 95 % interval (outside: paper above / below).",
            "params_per_task: trainable parameters of the costliest task, head excluded; params_fraction: of the "
            "backbone's parameters; bytes_per_task: the method's saved per-task state (head excluded).",
            "paper_*: " + paper.load(ta.paper_table)["source"] + ". acc_diff = acc - paper_acc.",
        ]
        if ta.backbone != paper_bb:
            t.notes.append(
                f"Ours run on {ta.backbone}, the paper's on {paper_bb}: the difference is not a reproduction."
            )
        for row in paper.load(ta.paper_table)["rows"]:
            if row.get("note") and any(r[MAIN_COLUMNS.index("paper_method")] == row["label"] for r in t.rows):
                t.notes.append(f"paper {row['label']}: {row['note']}.")
        tables.append(t)
    return tables


def _task_paper_cell(task: str) -> Any:  # noqa: ANN401 (a cell function)
    def cell(rec: Row) -> str:
        theirs = rec.get(f"{task}_paper")
        if theirs is None:
            return "—"
        where = rec.get(f"{task}_paper_vs_ci")
        return f"{theirs:.2f}" + (f" ({where})" if where else "")

    return cell


def per_dataset_tables(analyses: list[TableAnalysis]) -> list[Table]:
    """Table 4: final accuracy per task, ours (mean over seeds, 95 % t interval) beside the paper's per dataset."""
    tables = []
    paper_tasks = paper.load("table4_per_dataset")["tasks"]
    for ta in analyses:
        tasks = ta.members[0].tasks
        cols, md_cols, cells = ["method", "seeds"], ["method", "seeds"], {}
        for task in tasks:
            cols += [task, f"{task}_lo", f"{task}_hi", f"{task}_paper", f"{task}_diff", f"{task}_paper_vs_ci"]
            md_cols += [task, f"{task}_paper"]
            cells[task] = ci_cell(task, n="seeds")
            cells[f"{task}_paper"] = _task_paper_cell(task)
        t = Table(
            key=f"table4_{ta.slug}",
            title=f"Table 4: per-dataset accuracy, {ta.backbone} / {ta.stream}",
            columns=cols,
            md_columns=md_cols,
            md_cells=cells,
        )
        for g in ta.members:
            row = paper.per_dataset_row(ta.backbone, g.method, g.variant)
            out: list[Any] = [g.label, len(g.runs)]
            for j, task in enumerate(tasks):
                iv = g.task_interval(j) if g.tasks == tasks else None
                theirs = row["acc"][paper_tasks.index(task)] if row and task in paper_tasks else None
                mean = iv.mean if iv else None
                out += [*interval_values(iv), theirs, diff(mean, theirs), stats.vs_paper(iv, theirs)]
            t.rows.append(out)
        t.notes = [
            "Final accuracy (%) of each task after the last task: mean over seeds ± the half-width of its 95 % t "
            "interval (one seed: no interval). The paper's number is marked inside / outside that interval.",
            "paper: " + paper.load("table4_per_dataset")["source"] + ".",
        ]
        if not set(tasks) & set(paper_tasks):
            t.notes.append("This stream's tasks are not the paper's datasets, so the paper columns are empty.")
        if any(g.tasks != tasks for g in ta.members):
            t.notes.append("Rows that ran other tasks than the first row are left empty.")
        tables.append(t)
    return tables


def _mimic_label(rep: dict) -> str:
    spec, loss = rep.get("spec") or {}, (rep.get("mimicry") or {}).get("loss", "?")
    target = spec.get("target") if rep.get("family") == "vit" else spec.get("resnet_target")
    return f"{rep['backbone']} {target} G{spec.get('groups')} n{spec.get('templates')} K{spec.get('sets')} {loss}"


def _memory_mb(mem: dict) -> float | None:
    return mem.get("peak_cuda_mb", mem.get("peak_rss_mb")) if isinstance(mem, dict) else None


def perf_mimic_records(perf: dict) -> list[dict]:
    """Neural Mimicry records of a ``perf.json``: ``mimicry.<backbone>.<init>`` (CPU) and
    ``gpu.mimicry["<backbone>/<init>"]`` (GPU), each with ``seconds`` and a peak memory."""
    found: list[dict] = []

    def add(backbone: str, init: str, r: dict, device: str) -> None:
        mem = r["peak_cuda_gb"] * 1024 if "peak_cuda_gb" in r else r.get("peak_cuda_mb", r.get("peak_rss_mb"))
        found.append(
            {
                "backbone": backbone,
                "init": init,
                "seconds": float(r["seconds"]),
                "memory_mb": mem,
                "device": device,
                "iters": r.get("iters_run"),
                "projected": r.get("projected_paper_s"),
            }
        )

    def section(d: dict, device: str) -> None:
        for key, val in d.items():
            if isinstance(val, dict) and isinstance(val.get("seconds"), int | float):
                name, _, init = key.partition("/")
                add(name, init, val, device)
            elif isinstance(val, dict):
                for init, r in val.items():
                    if isinstance(r, dict) and isinstance(r.get("seconds"), int | float):
                        add(key, init, r, device)

    if isinstance(perf.get("mimicry"), dict):
        section(perf["mimicry"], str(perf.get("device", "cpu")))
    for key, val in perf.items():
        if isinstance(val, dict) and isinstance(val.get("mimicry"), dict):
            section(val["mimicry"], str(val.get("device", key)))
    return found


def mimicry_table(inp: Inputs) -> Table | None:
    """Table 5: Neural Mimicry seconds and memory, ours (mimic reports, perf.json) beside the paper's GPU numbers."""
    t = Table(
        key="table5_mimicry",
        title="Table 5: Neural Mimicry time and memory",
        columns=[
            "source",
            "backbone",
            "config",
            "device",
            "iters",
            "seconds",
            "memory_mb",
            "paper_seconds",
            "paper_peak_gpu_mb",
            "seconds_diff",
        ],
    )
    for rep in inp.mimic:
        mim = rep.get("mimicry") or {}
        secs = (rep.get("seconds") or {}).get("mimicry")
        prow = paper.mimicry_row(rep["backbone"])
        t.rows.append(
            [
                rep["_dir"],
                rep["backbone"],
                _mimic_label(rep),
                None if "memory" not in rep else ("cuda" if "peak_cuda_mb" in rep["memory"] else "cpu"),
                mim.get("iters_run"),
                secs,
                _memory_mb(rep.get("memory", {})),
                prow["seconds"] if prow else None,
                prow["peak_gpu_gb"] * 1024 if prow else None,
                diff(secs, prow["seconds"] if prow else None),
            ]
        )
    for perf in inp.perf:
        for rec in perf_mimic_records(perf):
            prow = paper.mimicry_row(rec["backbone"])
            config = f"perf init={rec['init']}"
            if rec["projected"] is not None:
                config += f" (projected to the paper's iterations: {rec['projected']:.1f} s)"
            t.rows.append(
                [
                    perf["_dir"],
                    rec["backbone"],
                    config,
                    rec["device"],
                    rec["iters"],
                    rec["seconds"],
                    rec["memory_mb"],
                    prow["seconds"] if prow else None,
                    prow["peak_gpu_gb"] * 1024 if prow else None,
                    diff(rec["seconds"], prow["seconds"] if prow else None),
                ]
            )
    if not t.rows:
        return None
    t.notes = [
        "memory_mb: peak CUDA memory when run on a GPU, else the process's peak RSS (not comparable to GPU memory).",
        "paper: " + paper.load("table5_mimicry")["source"] + "; iters: iterations our run needed "
        "(the SVD initialisation stops early).",
    ]
    return t


def reconstruction_table(inp: Inputs) -> Table | None:
    """Table 6: reconstruction similarity (and ImageNet top-1 when measured), ours beside the paper's."""
    t = Table(
        key="table6_reconstruction",
        title="Table 6: reconstruction similarity",
        columns=[
            "source",
            "backbone",
            "target",
            "loss",
            "weight_cos_min",
            "weight_cos_mean",
            "feature_similarity",
            "top1_original",
            "top1_reconstructed",
            "paper_label",
            "paper_similarity",
            "paper_top1_original",
            "paper_top1_reconstructed",
            "similarity_diff",
        ],
    )
    for rep in inp.mimic:
        spec, loss = rep.get("spec") or {}, (rep.get("mimicry") or {}).get("loss", "smoothl1")
        target = spec.get("target") if rep.get("family") == "vit" else None
        sim = (rep.get("outputs") or {}).get("feature_cosine_mean")
        sim = None if sim is None else 100.0 * sim
        inet = rep.get("imagenet") or {}
        prow = paper.reconstruction_row(rep["backbone"], target, loss)
        wc = rep.get("weight_cosine") or {}
        t.rows.append(
            [
                rep["_dir"],
                rep["backbone"],
                target,
                loss,
                wc.get("min"),
                wc.get("mean"),
                sim,
                None if "top1_original" not in inet else 100.0 * inet["top1_original"],
                None if "top1_reconstructed" not in inet else 100.0 * inet["top1_reconstructed"],
                prow["label"] if prow else None,
                prow["similarity"] if prow else None,
                prow["top1_original"] if prow else None,
                prow["top1_reconstructed"] if prow else None,
                diff(sim, prow["similarity"] if prow else None),
            ]
        )
    if not t.rows:
        return None
    t.notes = [
        "feature_similarity: mean per-block feature cosine (%) between original and reconstructed backbone "
        "on one batch (ImageNet when --imagenet-val was given, else random inputs).",
        "paper: " + paper.load("table6_reconstruction")["source"] + "; a backbone the paper does not report "
        "(vit_tiny, resnet_tiny) is set beside the paper's row for its family (ViT-S, ResNet-34).",
    ]
    return t


def run_index_table(runs: list[dict]) -> Table:
    """Every run used, for traceability: directory, label, seed, average accuracy."""
    t = Table(key="runs", title="Runs used", columns=["dir", "method", "backbone", "stream", "seed", "avg_acc", "bwt"])
    for r in sorted(runs, key=lambda r: (r["backbone"], r["stream"], label_of(r), int(r["seed"]))):
        t.rows.append([r["_dir"], label_of(r), r["backbone"], r["stream"], int(r["seed"]), r["avg_acc"], r["bwt"]])
    return t


def protocol_tables(groups: list[Group]) -> list[Table]:
    """The protocol beside each paper table: one line per card (what was run and why), for each family among the
    runs, plus the figures' settings; ``measured_count`` is the runs' own per-task count for that card."""
    from recast_bench.protocol import load
    from recast_bench.protocol.cards import family_of
    from recast_bench.protocol.render import COLUMNS, NOTES, row

    families = {family_of(g.backbone) for g in groups}
    out = []
    for file in ("table1", "table2", "figures"):
        header, cards = load(file)
        if file != "figures" and header["family"] not in families:
            continue
        t = Table(key=f"protocol_{file}", title=f"Protocol: {header['title']}", columns=list(COLUMNS))
        for card in cards:
            ids = {card.id, f"{card.method}[{card.variant}]" if card.variant else card.method}
            mine = [g for g in groups if family_of(g.backbone) == card.family and g.label.split("{")[0] in ids]
            measured = [g.params_per_task() for g in mine if g.params_per_task() is not None]
            t.rows.append(row(card, max(measured) if measured and file != "figures" else None))
        t.notes = list(NOTES)
        out.append(t)
    return out
