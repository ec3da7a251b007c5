"""Input-pipeline throughput and cache size: ``python -m recast_bench.data.bench [--dataset D --root R | --fake N]``.

Measures one dataset's training part (or ``--fake N`` generated 500x375 JPEGs when no dataset is at hand) with
:func:`recast_bench.perf.loading.measure_throughput`, the one implementation of these figures (``recast-bench perf``
reports the same ones): decoding each JPEG (the uncached float path), then from the uint8 cache on the float CPU path
(flip, resize, normalise in the loader workers) and the uint8 device path (workers only copy uint8 squares; the rest
runs on the training device); and prints the cache's size for the six datasets (``cache_size_table``).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from recast_bench.data.sources import load_source
from recast_bench.perf.loading import LoaderSetup, cache_size_table, fake_records, first, measure_throughput


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="flowers102")
    p.add_argument("--root", default="data")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n", type=int, default=512, help="images measured")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fake", type=int, default=0, help="measure on N generated 500x375 JPEGs instead")
    a = p.parse_args(argv)
    setup = LoaderSetup(a.size, num_workers=a.workers)
    with tempfile.TemporaryDirectory() as tmp:
        if a.fake:
            out = measure_throughput(first(fake_records(tmp, a.fake), a.n), setup)
        else:
            out = measure_throughput(first(load_source(a.dataset, a.root).splits["train"], a.n), setup, a.dataset)
    print(json.dumps({**out, "cache_size": cache_size_table(a.size)}, indent=1))


if __name__ == "__main__":
    main()
