"""Input-pipeline throughput: images/s decoding JPEGs vs reading the preprocessed uint8 cache.

Delegates to :func:`recast_bench.data.bench.measure_throughput` on generated 500x375 JPEGs (the size of a typical
Flowers/CUB photo), so it needs no dataset on disk.
"""

from __future__ import annotations

import tempfile
from typing import Any

from recast_bench.perf.common import error_reason, unavailable


def loading_figures(images: int, image_size: int, workers: int, batch: int, epochs: int) -> dict[str, Any] | str:
    try:
        from recast_bench.data.bench import fake_records, measure_throughput
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
    except Exception as e:  # noqa: BLE001
        return unavailable(error_reason(e))
    return {"source": "generated 500x375 JPEGs, quality 90", "epochs": epochs, **res}
