"""PNG plots of a reconstruction report: appendix A.3 diversity per group (Figures 7-8) and feature similarity."""

from __future__ import annotations

from pathlib import Path


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write ``diversity.png`` and ``feature_similarity.png`` under ``out_dir``; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    groups = report["diversity"]["groups"]
    keys = sorted(groups, key=int)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, metric, title in zip(
        axes,
        ("frobenius", "entropy", "coef_similarity"),
        ("Template Frobenius distance", "Singular-value entropy", "Intra-group coefficient cosine"),
    ):
        xs = [int(k) for k in keys if groups[k][metric] is not None]
        ax.plot(xs, [groups[str(x)][metric] for x in xs], marker="o")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("group")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(out / "diversity.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    feats = report.get("outputs", {}).get("feature_cosine")
    if feats:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.plot(range(1, len(feats) + 1), list(feats.values()), marker="o")
        ax.set_xticks(range(1, len(feats) + 1), list(feats), rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("cosine similarity")
        ax.set_title("Feature similarity, original vs reconstructed", fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        written.append(out / "feature_similarity.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
