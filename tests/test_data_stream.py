"""The six-dataset stream: order, permutations, subsets, limits, official and pooled splits, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.datasets import write_six

from recast_bench.config import compose_config
from recast_bench.data import build_stream
from recast_bench.data.six import permuted_order
from recast_bench.data.sources import PAPER_ORDER, load_source
from recast_bench.data.splits import plan_splits, stratified_partition
from recast_bench.errors import UserError


def stream_cfg(root, *overrides: str, stream: str = "six"):
    # ++ because conf/stream/*.yaml list only what they change (the dataclass holds the rest)
    return compose_config([f"stream={stream}", f"++stream.root={root}", *overrides]).stream


def test_six_builds_in_paper_order_with_right_sizes(six_data, tmp_path):
    root, counts = six_data
    tasks = build_stream(stream_cfg(root, "++stream.val_fraction=0.2"), 32, str(tmp_path))
    assert [t.name for t in tasks] == ["flowers102", "aircraft", "mit67", "cifar100", "cifar10", "cub200"]
    for t in tasks:
        c = counts[t.name]
        assert t.num_classes == c["classes"]
        assert len(t.test) == c["test"]
        if "val" in c:  # Flowers102 and Aircraft: the official val split is used as is
            assert (len(t.train), len(t.val)) == (c["train"], c["val"])
        else:  # 20 % of the official train split held out, exactly
            assert len(t.val) == round(0.2 * c["train"]) and len(t.train) + len(t.val) == c["train"]
        x, y = t.train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < t.num_classes


def test_reversed_and_permuted_orders(six_root, tmp_path):
    rev = build_stream(stream_cfg(six_root, stream="six_reversed"), 32, str(tmp_path))
    assert [t.name for t in rev] == list(reversed(PAPER_ORDER))
    perm = build_stream(stream_cfg(six_root, "++stream.seed=3", stream="six_permuted"), 32, str(tmp_path))
    assert [t.name for t in perm] == permuted_order(3)
    assert sorted(permuted_order(3)) == sorted(PAPER_ORDER)
    assert permuted_order(3) == permuted_order(3)
    assert len({tuple(permuted_order(s)) for s in range(6)}) > 1


def test_subset_reads_only_listed_datasets_and_keeps_their_order(tmp_path):
    write_six(tmp_path / "d", only=["cifar10", "cub200"])  # the other four are absent
    tasks = build_stream(stream_cfg(tmp_path / "d", "++stream.tasks=[cub200,cifar10]"), 32, None)
    assert [t.name for t in tasks] == ["cub200", "cifar10"]
    with pytest.raises(UserError, match="not found"):
        build_stream(stream_cfg(tmp_path / "d", "++stream.tasks=[flowers102]"), 32, None)
    with pytest.raises(UserError, match="unknown task 'imagenet'"):
        build_stream(stream_cfg(tmp_path / "d", "++stream.tasks=[imagenet]"), 32, None)


def test_per_task_sample_limits(six_root, tmp_path):
    cfg = stream_cfg(
        six_root, "++stream.val_fraction=0.25", "++stream.max_train_per_task=4", "++stream.max_eval_per_task=2"
    )
    for t in build_stream(cfg, 32, str(tmp_path)):
        assert t.sizes() == {"train": 4, "val": 2, "test": 2}, t.name


def test_official_holdout_is_disjoint_seeded_and_never_touches_test(six_root):
    src = load_source("cub200", six_root)
    parts, idx = plan_splits(src, "official", 0.34, [0.7, 0.15, 0.15], seed=0)
    assert parts == ["train", "test"]
    tr, va, te = (idx[s] for s in ("train", "val", "test"))
    assert set(tr[:, 0]) == set(va[:, 0]) == {0} and set(te[:, 0]) == {1}
    assert not set(tr[:, 1]) & set(va[:, 1]) and len(tr) + len(va) == len(src.splits["train"])
    assert set(src.splits["train"].labels[va[:, 1]]) == {0, 1, 2}  # stratified: every class in val
    _, again = plan_splits(src, "official", 0.34, [0.7, 0.15, 0.15], seed=0)
    _, other = plan_splits(src, "official", 0.34, [0.7, 0.15, 0.15], seed=1)
    assert np.array_equal(again["val"], va) and not np.array_equal(other["val"], va)


@pytest.mark.parametrize("name", ["mit67", "cifar10", "flowers102"])
def test_pooled_split_partitions_all_images(six_data, name):
    root, counts = six_data
    src = load_source(name, root)
    parts, idx = plan_splits(src, "pooled", 0.1, [0.6, 0.2, 0.2], seed=0)
    total = counts[name].get("pool") or sum(counts[name][s] for s in ("train", "val", "test") if s in counts[name])
    rows = [tuple(r) for s in ("train", "val", "test") for r in idx[s]]
    assert len(rows) == len(set(rows)) == total  # disjoint and complete
    assert [len(idx[s]) for s in ("train", "val", "test")] == [
        round(0.6 * total),
        round(0.8 * total) - round(0.6 * total),
        total - round(0.8 * total),
    ]
    assert parts == (["pool"] if name == "mit67" else list(src.splits))


def test_stratified_partition_exact_sizes_and_class_shares():
    labels = np.repeat(np.arange(5), [40, 20, 10, 7, 3])
    parts = stratified_partition(labels, [0.7, 0.15, 0.15], seed=4)
    assert [len(p) for p in parts] == [56, 12, 12]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(80))
    for p, f in zip(parts, [0.7, 0.15, 0.15]):
        for c, n in enumerate([40, 20, 10, 7, 3]):
            assert abs((labels[p] == c).sum() - f * n) <= 1.0, (f, c)


@pytest.mark.parametrize(
    "override", ["++stream.split=random", "++stream.val_fraction=1.5", "++stream.pooled_fractions=[0.75,0.15,0.15]"]
)
def test_bad_split_settings_are_user_errors(six_root, override):
    with pytest.raises(UserError, match="stream\\.(split|val_fraction|pooled_fractions)"):
        build_stream(stream_cfg(six_root, "++stream.tasks=[cifar10]", "++stream.split=pooled", override), 32, None)


def test_train_flips_eval_does_not_and_both_normalise(six_root):
    (t,) = build_stream(stream_cfg(six_root, "++stream.tasks=[cub200]"), 32, None)
    assert t.train.raw(0).shape == (3, 37, 37)  # stored at the resize target; the 32 px crop is the transform's
    raw = t.train.raw(0)[:, 2:34, 2:34].float() / 255  # torchvision's center-crop offset: round(2.5) = 2
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    plain, flipped = (raw - mean) / std, ((raw - mean) / std).flip(-1)
    torch.manual_seed(0)
    outs = [t.train[0][0] for _ in range(20)]
    assert any(torch.allclose(o, plain, atol=1e-5) for o in outs)
    assert any(torch.allclose(o, flipped, atol=1e-5) for o in outs)
    test_raw = t.test.raw(0)[:, 2:34, 2:34].float() / 255
    assert all(torch.allclose(t.test[0][0], (test_raw - mean) / std, atol=1e-5) for _ in range(5))


def test_dataset_normalisation_uses_train_statistics(six_root, tmp_path):
    cfg = stream_cfg(six_root, "++stream.tasks=[mit67]", "++stream.normalization=dataset")
    (t,) = build_stream(cfg, 32, str(tmp_path))
    x = torch.stack([t.val.transform(t.train.raw(i)) for i in range(len(t.train))])  # eval transform: no flip
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    assert len(list((tmp_path / "stats").glob("mit67-train-32px-*.json"))) == 1  # cached for the next run
