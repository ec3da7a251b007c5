"""The six dataset loaders on fake copies in their native formats: counts, labels, images, error messages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from fixtures.datasets import write_six

from recast_bench.data.images import DecodedImages
from recast_bench.data.sources import PAPER_ORDER, SPECS, load_source
from recast_bench.errors import UserError

# The fixture's class colours (tests/fixtures/datasets.py::_image): the mean colour of an image names its class.
COLOURS = np.array([[(c * 97) % 256, (c * 57 + 80) % 256, (c * 31 + 160) % 256] for c in range(3)], np.float64)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_loader_counts_and_labels_match_the_files(six_data, name):
    root, counts = six_data
    src = load_source(name, root)
    assert src.num_classes == counts[name]["classes"]
    for split in ("train", "val", "test"):
        if split in counts[name]:
            assert len(src.splits[split]) == counts[name][split], split
    assert set(src.splits) == {s for s in ("train", "val", "test") if s in counts[name]}
    if name != "flowers102":  # torchvision's 102 Flowers names do not fit the 3-class fixture
        assert len(src.class_names) == src.num_classes and all(isinstance(c, str) and c for c in src.class_names)
    if name == "mit67":  # pooled uses every image under Images/, not only the listed ones
        assert len(src.pool) == counts[name]["pool"]
    for split, rec in src.splits.items():
        imgs = DecodedImages(rec, 16, 16)
        means = np.stack([imgs.image(i).double().mean(dim=(1, 2)).numpy() for i in range(len(rec))])
        nearest = np.argmin(((means[:, None, :] - COLOURS[None]) ** 2).sum(-1), axis=1)
        np.testing.assert_array_equal(nearest, rec.labels, err_msg=f"{name}/{split}: labels do not match images")


def test_cifar_rows_are_the_pickled_pixels(six_root):
    rec = load_source("cifar10", six_root).splits["train"]
    assert rec.arrays.shape == (15, 32, 32, 3) and rec.arrays.dtype == np.uint8
    # stored at the native 32 px for any model size (the device resizes): the pickled pixels themselves
    for size in (32, 224):
        x = DecodedImages(rec, 32, size).image(0)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert torch.equal(x, torch.from_numpy(rec.arrays[0]).permute(2, 0, 1))


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_missing_dataset_gives_one_line_with_layout_and_source(tmp_path, name):
    with pytest.raises(UserError) as e:
        load_source(name, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "not found" in msg
    assert SPECS[name].layout in msg and SPECS[name].source in msg


@pytest.mark.parametrize(
    "name, remove, needle",
    [
        ("flowers102", "flowers-102/jpg/image_00004.jpg", "image_00004.jpg"),
        ("flowers102", "flowers-102/setid.mat", "incomplete (no flowers-102/setid.mat)"),
        ("aircraft", "fgvc-aircraft-2013b/data/images_variant_val.txt", "images_variant_val.txt"),
        ("aircraft", "fgvc-aircraft-2013b/data/images/1000001.jpg", "1000001.jpg"),
        ("mit67", "mit67/TestImages.txt", "TestImages.txt"),
        ("mit67", "mit67/Images/bakery/img_0000.jpg", "bakery/img_0000.jpg"),
        ("cifar10", "cifar-10-batches-py/data_batch_3", "incomplete (no cifar-10-batches-py/data_batch_3)"),
        ("cifar100", "cifar-100-python/meta", "incomplete (no cifar-100-python/meta)"),
        ("cub200", "CUB_200_2011/train_test_split.txt", "train_test_split.txt"),
    ],
)
def test_incomplete_dataset_names_what_is_missing(tmp_path, name, remove, needle):
    write_six(tmp_path, only=[name])
    (tmp_path / remove).unlink()
    with pytest.raises(UserError) as e:
        load_source(name, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and SPECS[name].layout in msg


def test_inconsistent_lists_are_reported(tmp_path):
    write_six(tmp_path, only=["aircraft", "cub200"])
    (tmp_path / "fgvc-aircraft-2013b/data/variants.txt").write_text("707-320\n")  # drop two variant names
    with pytest.raises(UserError, match="inconsistent"):
        load_source("aircraft", tmp_path)
    labels = tmp_path / "CUB_200_2011/image_class_labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]))
    with pytest.raises(UserError, match="inconsistent"):
        load_source("cub200", tmp_path)


def test_corrupt_cifar_pickle_is_a_user_error(tmp_path, six_root):
    shutil.copytree(six_root / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="unreadable"):
        load_source("cifar10", tmp_path)
