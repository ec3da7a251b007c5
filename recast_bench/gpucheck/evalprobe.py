"""Records the device of every test evaluation of a run (the check's ``eval-device`` evidence).

``with probe() as devices: ...`` patches the engine's ``predict`` (every test evaluation goes through it; ``accuracy``,
which the Avalanche learner uses, calls it) wherever it is bound: in ``recast_bench.engine.evaluate`` itself (so
``accuracy`` and a module imported later see the spy), in the Lightning learner, and in the Avalanche learner only
if a run has already imported it. Nothing here imports avalanche: a Lightning case must
run where avalanche-lib is not installed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

BINDERS = ("recast_bench.engine.evaluate", "recast_bench.engine.learner", "baselines.avalanche_common")
"""Modules that may hold a reference named ``predict`` to the engine's evaluation function."""


@contextlib.contextmanager
def probe() -> Iterator[list[str]]:
    import recast_bench.engine.evaluate as evaluate
    import recast_bench.engine.learner  # noqa: F401  (binds predict at import: patch it after)

    real = evaluate.predict
    devices: list[str] = []

    def spy(model, t, loader, n, setup, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        params = next(iter(model.parameters()), None)
        devices.append(str(params.device) if params is not None else str(setup.device))
        return real(model, t, loader, n, setup, *args, **kwargs)

    def rebind(old: Any, new: Any) -> None:
        for name in BINDERS:
            mod = sys.modules.get(name)
            if mod is not None and getattr(mod, "predict", None) is old:
                mod.predict = new

    rebind(real, spy)
    try:
        yield devices
    finally:
        rebind(spy, real)  # also in a module the run imported meanwhile (it bound the spy)
