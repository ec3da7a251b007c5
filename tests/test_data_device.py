"""The uint8 device path against the CPU reference pipeline, its seeded flips, and safe concurrent cache builds.

Stated tolerance (after normalisation, ImageNet statistics): photos stored at the resize target are only cropped on
the device and equal torchvision's resize + crop + normalise to float rounding (max |diff| <= 1e-5); CIFAR, stored
at its native 32 px and resized on the device, differs by at most one uint8 level, 1 / (255 * std) <= 0.0176, with a
mean |diff| under 0.005 (torchvision's uint8 resize rounds in fixed point, the device resizes in float and rounds).
"""

from __future__ import annotations

import threading

import pytest
import torch

from recast_bench.config import compose_config
from recast_bench.data import build_stream
from recast_bench.data import cache as cache_mod
from recast_bench.data.buildlock import BuildLock, temp_name
from recast_bench.data.device_transforms import DeviceAugment
from recast_bench.data.sources import load_source
from recast_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess, sample_transform

ONE_LEVEL = 1 / (255 * min(IMAGENET_STD)) + 1e-5


def one_task(root, name, size, cache_dir, *extra):
    cfg = compose_config(["stream=six", f"++stream.root={root}", f"++stream.tasks=[{name}]", *extra]).stream
    (t,) = build_stream(cfg, size, str(cache_dir))
    return t


def reference(root, name, size, flip=False):
    """torchvision on each decoded image: resize, center crop, (flip,) float, normalise."""
    rec = load_source(name, root).splits["test"]
    tf = sample_transform(False, IMAGENET_MEAN, IMAGENET_STD)
    imgs = [preprocess(rec.arrays[i], size) if rec.arrays is not None else load_image(rec.path(i), size)
            for i in range(len(rec))]  # fmt: skip
    out = torch.stack([tf(x) for x in imgs])
    return out.flip(-1) if flip else out


@pytest.mark.parametrize(
    "name, size, source, max_diff, mean_diff",
    [
        ("flowers102", 224, 256, 1e-5, 1e-6),  # photo: cached at the resize target, cropped on the device
        ("cub200", 32, 37, 1e-5, 1e-6),
        ("cifar10", 224, 32, ONE_LEVEL, 5e-3),  # CIFAR: native 32 px, upsampled on the device
        ("cifar100", 32, 32, ONE_LEVEL, 5e-3),
    ],
)
def test_device_path_equals_cpu_reference(six_root, tmp_path, name, size, source, max_diff, mean_diff):
    t = one_task(six_root, name, size, tmp_path)
    assert t.batch_transform.source == source
    ds = t.uint8("test")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    assert x.dtype == torch.uint8 and x.shape[-1] == source  # what travels to the device
    for flip in (False, True):
        dev = t.batch_transform(x, torch.full((len(x),), flip))
        ref = reference(six_root, name, size, flip)
        assert dev.shape == ref.shape == (len(x), 3, size, size)
        d = (dev - ref).abs()
        assert float(d.max()) <= max_diff and float(d.mean()) <= mean_diff, (float(d.max()), float(d.mean()))
    # the float CPU path (Avalanche, method init) computes the same maths per sample
    cpu = torch.stack([t.test[i][0] for i in range(len(ds))])
    assert torch.allclose(cpu, t.batch_transform(x), atol=1e-6)


def test_uint8_views_follow_sample_limits_and_stay_uint8(six_root, tmp_path):
    t = one_task(six_root, "mit67", 32, tmp_path, "++stream.max_train_per_task=5")
    u = t.uint8("train")
    assert len(u) == len(t.train) == 5
    for i in range(5):
        x, y = u[i]
        assert x.dtype == torch.uint8 and x.shape == (3, 37, 37) and y == t.train[i][1]


def test_device_flips_are_seeded_and_mixed(six_root, tmp_path):
    t = one_task(six_root, "cub200", 32, tmp_path)
    x = torch.stack([t.uint8("train")[i][0] for i in range(len(t.train))])
    a, b, c = (
        DeviceAugment(t.batch_transform, 5),
        DeviceAugment(t.batch_transform, 5),
        DeviceAugment(t.batch_transform, 6),
    )
    fa = [a.flips(64, True) for _ in range(3)]
    fb = [b.flips(64, True) for _ in range(3)]
    assert all(torch.equal(u, v) for u, v in zip(fa, fb))  # same seed, same draws in the same order
    assert not torch.equal(torch.cat(fa), torch.cat([c.flips(64, True) for _ in range(3)]))
    assert 0.3 < torch.cat(fa).float().mean() < 0.7 and a.flips(8, False) is None  # eval never flips
    out = DeviceAugment(t.batch_transform, 5)(x, True)
    plain = t.batch_transform(x)
    mask = DeviceAugment(t.batch_transform, 5).flips(len(x), True)
    assert torch.equal(out[mask], plain[mask].flip(-1)) and torch.equal(out[~mask], plain[~mask])


def test_concurrent_builders_build_once(six_root, tmp_path, monkeypatch):
    rec = load_source("cub200", six_root).splits["train"]
    builds = []
    real = cache_mod.build_cache

    def slow_build(*a, **k):
        builds.append(threading.get_ident())
        real(*a, **k)

    monkeypatch.setattr(cache_mod, "build_cache", slow_build)
    out = []
    threads = [
        threading.Thread(target=lambda: out.append(cache_mod.cached_images(rec, "cub200", "train", 37, 32, tmp_path)))
        for _ in range(3)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(builds) == 1 and len(out) == 3 and len({ds.path for ds in out}) == 1
    assert sorted(p.suffix for p in (tmp_path / "images").iterdir()) == [".json", ".npy"]  # no lock or temp left


def test_stale_lock_is_taken_over_and_live_one_waited_for(tmp_path):
    lock = tmp_path / "entry.npy.lock"
    lock.write_text('{"host": "other-node", "pid": 1, "beat": 3}')  # a builder that died: its beat never changes
    built = []
    assert BuildLock(lock, stale_s=0.3, poll_s=0.05).run(lambda: False, lambda: built.append(1))
    assert built == [1] and not lock.exists()
    # a live holder (heartbeat rewriting the file) is waited for, and its result used
    done = threading.Event()
    holder = BuildLock(lock, beat_s=0.05)
    th = threading.Thread(target=lambda: holder.run(done.is_set, lambda: (threading.Event().wait(0.6), done.set())))
    th.start()
    threading.Event().wait(0.1)
    assert not BuildLock(lock, stale_s=0.3, poll_s=0.05).run(done.is_set, lambda: built.append(2))
    th.join()
    assert built == [1] and done.is_set()


def test_temp_names_carry_host_pid_and_randomness(tmp_path):
    import os
    import socket

    a, b = temp_name(tmp_path / "x.npy"), temp_name(tmp_path / "x.npy")
    assert a != b and f"{socket.gethostname()}-{os.getpid()}-" in a.name and a.name.startswith("x.npy.tmp-")
