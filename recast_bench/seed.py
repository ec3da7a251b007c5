"""Seeding of Python, numpy, torch and dataloader workers, so equal seeds give equal results on CPU."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def worker_init(worker_id: int) -> None:
    """Derive each dataloader worker's Python/numpy seeds from torch's per-worker seed."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def loader_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
