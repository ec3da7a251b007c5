"""``predictions.safetensors``: the contract's writer and reader round-trip, refuse bad input, leave no temp file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from recast_bench.errors import UserError
from recast_bench.report.predictions import FILE, load_predictions, save_predictions


def test_round_trip_from_torch_and_numpy(tmp_path):
    pred = torch.tensor([0, 2, 1, 1], dtype=torch.int64)  # the learner's last_predictions are CPU int64
    label = torch.tensor([0, 1, 1, 1])
    save_predictions(
        tmp_path / FILE,
        {"cifar10": (pred, label), "cub200": (np.array([5, 199]), np.array([5, 3]))},
        {"after_task": "cub200", "fingerprint": "abc"},
    )
    assert [p.name for p in tmp_path.iterdir()] == [FILE]  # written under a temporary name, then renamed
    with safe_open(str(tmp_path / FILE), framework="numpy") as f:  # the contract's keys and dtype
        assert set(f.keys()) == {"pred/cifar10", "label/cifar10", "pred/cub200", "label/cub200"}
        assert f.get_tensor("pred/cub200").dtype == np.int16 and f.metadata()["after_task"] == "cub200"
    p = load_predictions(tmp_path)
    assert p.meta == {"after_task": "cub200", "fingerprint": "abc"}
    assert p.right("cifar10").tolist() == [True, False, True, True]
    assert p.pred["cub200"].tolist() == [5, 199]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        save_predictions(tmp_path / FILE, {"t": (np.zeros(3, int), np.zeros(2, int))}, {})
    with pytest.raises(ValueError, match="int16"):
        save_predictions(tmp_path / FILE, {"t": (np.array([40000]), np.array([1]))}, {})
    with pytest.raises(ValueError, match="one-dimensional"):
        save_predictions(tmp_path / FILE, {"t": (np.zeros((2, 2), int), np.zeros(4, int))}, {})
    assert not (tmp_path / FILE).exists()
    assert load_predictions(tmp_path) is None  # a run from before the contract
    (tmp_path / FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        load_predictions(tmp_path)
    from safetensors.numpy import save_file

    save_file({"pred/t": np.zeros(2, np.int16)}, str(tmp_path / FILE), metadata={"x": json.dumps(1)})
    with pytest.raises(UserError, match="label/<task>"):
        load_predictions(tmp_path)
