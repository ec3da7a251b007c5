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

from typing import Any

import torch
from avalanche.training.plugins import EWCPlugin


class FlatEWCPlugin(EWCPlugin):
    """avalanche's EWC with the penalty computed over flat tensors (same value, a few kernels per experience)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flat: dict[int, tuple[tuple[str, ...], torch.Tensor, torch.Tensor, tuple[int, int]]] = {}

    @classmethod
    def replacing(cls, plugin: EWCPlugin) -> FlatEWCPlugin:
        """A flat plugin with ``plugin``'s settings and state (to swap into a built ``EWC`` strategy)."""
        flat = cls.__new__(cls)
        flat.__dict__.update(plugin.__dict__)
        flat._flat = {}
        return flat

    def _flat_anchor(
        self, e: int, params: dict[str, torch.Tensor]
    ) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
        saved, imp = self.saved_params[e], self.importances[e]
        # the dictionaries are replaced, never edited, once their experience is done (after_training_exp writes the
        # current experience's; a checkpoint load swaps both), so their identity keys the cache
        key = (id(saved), id(imp))
        hit = self._flat.get(e)
        if hit is not None and hit[3] == key:
            return hit[0], hit[1], hit[2]
        names = tuple(k for k, p in params.items() if k in saved and saved[k].data.shape == p.shape)
        flat_saved = torch.cat([saved[k].data.reshape(-1) for k in names]) if names else None
        flat_imp = torch.cat([imp[k].data.reshape(-1) for k in names]) if names else None
        self._flat[e] = (names, flat_saved, flat_imp, key)
        return names, flat_saved, flat_imp

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
            names, flat_saved, flat_imp = self._flat_anchor(e, params)
            if names:
                if names not in live:
                    live[names] = torch.cat([params[k].reshape(-1) for k in names])
                penalty = penalty + (flat_imp * (live[names] - flat_saved).square()).sum()
            penalty = penalty + self._grown_penalty(e, params, set(names))
        strategy.loss += self.ewc_lambda * penalty

    def _grown_penalty(self, e: int, params: dict[str, torch.Tensor], flat: set[str]) -> torch.Tensor | float:
        """avalanche's own term for parameters whose shape grew since experience ``e`` (it expands the saved data)."""
        out: torch.Tensor | float = 0.0
        saved, imp = self.saved_params[e], self.importances[e]
        for k, p in params.items():
            if k in saved and k not in flat:
                out = out + (imp[k].expand(p.shape) * (p - saved[k].expand(p.shape)).pow(2)).sum()
        return out

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, **kwargs)
        self._flat.clear()
