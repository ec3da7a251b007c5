"""Input-pipeline figures: loader images/s on the uint8 device path vs the float CPU path, and the cache's size.

Two sources, measured in the same run: generated 500x375 JPEGs (the size of a typical Flowers/CUB photo; stored as
256 px squares for a 224 px model) and generated 32x32 arrays (CIFAR, stored at 32 px). For each, the loader with
``workers`` workers is timed on the float CPU path (flip, resize, normalise in the workers) and on the uint8 device
path (workers copy uint8 squares; the rest runs on the training device), interleaved, and the ratio reported. The
cache size of the six datasets comes from their official image counts and stored sides, so it needs no data.
"""

from __future__ import annotations

import tempfile
from typing import Any

from recast_bench.perf.common import error_reason, unavailable


def loading_figures(images: int, image_size: int, workers: int, batch: int, epochs: int) -> dict[str, Any] | str:
    try:
        from recast_bench.data.bench import cache_size_table, fake_cifar, fake_records, measure_throughput, path_figures
    except ImportError as e:
        return unavailable(f"recast_bench.data.bench is missing ({e})")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rec = fake_records(tmp, images)
            res = measure_throughput(
                image_size=image_size,
                max_images=images,
                batch_size=batch,
                num_workers=workers,
                epochs=epochs,
                records=rec,
            )
        with tempfile.TemporaryDirectory() as tmp:
            cifar = path_figures(fake_cifar(max(images, 4 * batch)), "cifar", tmp, image_size, batch, workers, epochs)
    except Exception as e:  # noqa: BLE001
        return unavailable(error_reason(e))
    return {
        "source": "generated 500x375 JPEGs, quality 90",
        "epochs": epochs,
        **res,
        "cifar_like": {"source": "generated 32x32 arrays", **cifar},
        "cache_size_six": cache_size_table(image_size),
        "cache_size_six_pooled": cache_size_table(image_size, "pooled")["total_gib"],
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m recast_bench.perf.loading --out FILE``: only these figures, as JSON (``recast-bench perf`` runs
    them among the others)."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args(argv)
    res = loading_figures(a.images, a.size, a.workers, a.batch, a.epochs)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
