"""Records the device of every test evaluation of a run (the check's ``eval-device`` evidence).

In-process: ``with probe() as devices: ...``. As a wrapper process: ``python -m recast_bench.gpucheck.evalprobe
FILE run ...`` runs ``recast-bench run ...`` and writes the devices to ``FILE.<rank>`` (a DDP rank re-runs this
same command, so each rank writes its own file).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def probe() -> Iterator[list[str]]:
    """Patch the engine's and the Avalanche learner's ``accuracy`` to record where each evaluation ran."""
    import baselines.avalanche_common as ava
    import recast_bench.engine.learner as lightning_learner

    devices: list[str] = []
    originals: list[tuple[Any, Any]] = []

    def wrap(real: Any) -> Any:
        def spy(model, t, loader, n, device, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            params = next(iter(model.parameters()), None)
            devices.append(str(params.device) if params is not None else str(device))
            return real(model, t, loader, n, device, *args, **kwargs)

        return spy

    for mod in (lightning_learner, ava):
        originals.append((mod, mod.accuracy))
        mod.accuracy = wrap(mod.accuracy)
    try:
        yield devices
    finally:
        for mod, real in originals:
            mod.accuracy = real


def main() -> int:
    from recast_bench.cli import main as cli_main

    path, argv = sys.argv[1], sys.argv[2:]
    with probe() as devices:
        rc = cli_main(argv)
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    with open(f"{path}.{rank}", "w") as f:
        json.dump(devices, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
