"""EWC's penalty in a few kernels: avalanche's ``EWCPlugin`` with its ``before_backward`` flattened.

avalanche-lib 0.6 adds the penalty ``sum_e sum_k imp_e[k] * (theta[k] - theta_e[k])**2`` with a Python loop over
every earlier experience ``e`` and every parameter tensor ``k``: on ResNet-34 (110 tensors) that is 1,210 aten ops per
earlier experience per training step (550 forward, 660 backward), each a small kernel. On a GPU the host issues them
slower than the GPU runs them, so the step waits on Python (``recast_bench/perf/work.py`` charges it).

Here the anchors and importances of each finished experience are concatenated once into two flat tensors, the live
parameters are concatenated once per step (``torch.cat``, whose backward is a split), and the penalty of an
experience is ``(imp * (theta - theta_e).square()).sum()``: a handful of ops per experience whatever the network.
The sum is the same sum taken in one reduction instead of 110 partial ones, so it agrees with avalanche's to fp32
rounding (tested, with the gradients). Everything else is avalanche's plugin unchanged: the importance pass, the
``separate``/``online`` modes, the saved dictionaries that checkpoints store. A parameter whose shape grew since it
was saved (avalanche's expanding heads) keeps avalanche's own per-tensor expand-and-add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from avalanche.training.plugins import EWCPlugin


@dataclass
class _Anchor:
    """One finished experience's anchors and importances, flat, for the parameters whose shape is unchanged."""

    key: tuple[int, int]
    names: tuple[str, ...]
    grown: tuple[str, ...]
    """Saved parameters whose shape grew since (avalanche's expanding heads): avalanche's per-tensor term."""
    saved: torch.Tensor | None
    imp: torch.Tensor | None


class FlatEWCPlugin(EWCPlugin):
    """avalanche's EWC with the penalty computed over flat tensors (same value, a few kernels per experience)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flat: dict[int, _Anchor] = {}

    @classmethod
    def replacing(cls, plugin: EWCPlugin) -> FlatEWCPlugin:
        """A flat plugin with ``plugin``'s settings and state (to swap into a built ``EWC`` strategy)."""
        flat = cls.__new__(cls)
        flat.__dict__.update(plugin.__dict__)
        flat._flat = {}
        return flat

    def _flat_anchor(self, e: int, params: dict[str, torch.Tensor]) -> _Anchor:
        saved, imp = self.saved_params[e], self.importances[e]
        # the dictionaries are replaced, never edited, once their experience is done (after_training_exp writes the
        # current experience's; a checkpoint load swaps both), so their identity keys the cache
        key = (id(saved), id(imp))
        hit = self._flat.get(e)
        if hit is not None and hit.key == key:
            return hit
        names = tuple(k for k, p in params.items() if k in saved and saved[k].data.shape == p.shape)
        anchor = _Anchor(
            key=key,
            names=names,
            grown=tuple(k for k in params if k in saved and k not in names),
            saved=torch.cat([saved[k].data.reshape(-1) for k in names]) if names else None,
            imp=torch.cat([imp[k].data.reshape(-1) for k in names]) if names else None,
        )
        self._flat[e] = anchor
        return anchor

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        exp_counter = strategy.clock.train_exp_counter
        if exp_counter == 0:
            return
        if self.mode not in ("separate", "online"):
            raise ValueError("Wrong EWC mode.")
        experiences = range(exp_counter) if self.mode == "separate" else [exp_counter - 1]
        params = dict(strategy.model.named_parameters())
        penalty = torch.zeros((), device=strategy.device)
        live: dict[tuple[str, ...], torch.Tensor] = {}  # the concatenated parameters, once per step per name set
        for e in experiences:
            a = self._flat_anchor(e, params)
            if a.names:
                if a.names not in live:
                    live[a.names] = torch.cat([params[k].reshape(-1) for k in a.names])
                penalty = penalty + (a.imp * (live[a.names] - a.saved).square()).sum()
            for k in a.grown:  # avalanche's own term: it expands the saved data to the grown shape
                p, saved, imp = params[k], self.saved_params[e][k], self.importances[e][k]
                penalty = penalty + (imp.expand(p.shape) * (p - saved.expand(p.shape)).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, **kwargs)
        self._flat.clear()
