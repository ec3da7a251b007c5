"""Shipping a learned task: export (merged state dict or torch.export program), task packs, predict, bad input.

Runs are tiny (vit_tiny / resnet_tiny, random init, 2 tasks, 1 epoch). Before exporting, every task's own state is
perturbed with large random values, so an adapter the export forgot to fold would change the logits far beyond the
tolerance (a freshly trained adapter is too close to zero to show that).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from recast_bench.cli import main
from recast_bench.deploy import load_run
from recast_bench.deploy.export import TOLERANCE, export_task
from recast_bench.engine.model import head_key

STREAM = [
    "stream.num_tasks=2",
    "stream.classes_per_task=[3,4]",
    "stream.train_per_class=6",
    "stream.val_per_class=2",
    "stream.test_per_class=3",
]
TRAINER = ["trainer=tiny", "trainer.epochs=1", "trainer.batch_size=8", "trainer.progress_bar=false"]
# RoSA's default sparse MLP variant keeps round(1e-5 * 9216) = 0 entries per vit_tiny layer: use its LoRA + sparse one.
EXTRA = {"rosa": ["method.rosa.variant=full"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(method, backbone)`` -> directory of a finished tiny run (made once per module)."""
    root = tmp_path_factory.mktemp("deploy")
    made: dict[tuple[str, str], object] = {}

    def make(method: str, backbone: str = "vit_tiny"):  # noqa: ANN202
        if (method, backbone) not in made:
            out = root / f"{method}-{backbone}"
            argv = ["run", "--method", method, "--backbone", backbone, "--stream", "synthetic", "--out", str(out),
                    f"paths.data_dir={root / 'data'}", "logger=none", *STREAM, *TRAINER]  # fmt: skip
            argv += EXTRA.get(method, [])
            if "recast" in method:  # a short Neural Mimicry: the export's exactness does not depend on its quality
                argv.append("method.recast.mimic_iters=20")
            assert main(argv) == 0
            made[(method, backbone)] = out
        return made[(method, backbone)]

    return make


def perturb(run, seed: int = 0) -> None:  # noqa: ANN001
    """Large random task states (heads too), so every adapter visibly changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for state in run.states.values():
        for k, v in state.items():
            if v.dtype == torch.uint8:  # Piggyback's packed mask bits
                state[k] = torch.randint(0, 256, v.shape, generator=g, dtype=torch.uint8)
            elif v.dtype.is_floating_point:
                # relative noise keeps signs and scales (BN variances stay positive, deep nets stay finite);
                # entries that are exactly zero (an untrained LoRA B) get absolute noise
                noise = torch.randn(v.shape, generator=g, dtype=v.dtype)
                state[k] = torch.where(v == 0, 0.1 * noise, v * torch.exp(0.3 * noise))
            # integer index buffers (RoSA's sparse support) keep their positions
    run.active = None  # force the next activate() to load the perturbed state


def plain_logits(meta: dict, out, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Load an export the way a user without recast-bench would: stock timm/torchvision, or torch.export."""
    if meta["format"] == "state_dict":
        from safetensors.torch import load_file

        arch = meta["architecture"]
        if arch["library"] == "timm":
            import timm

            model = timm.create_model(arch["constructor"], pretrained=False, **arch["kwargs"])
        else:
            import torchvision

            model = getattr(torchvision.models, arch["constructor"])(weights=None, **arch["kwargs"])
        model.load_state_dict(load_file(str(out / meta["weights"])), strict=True)
        return model.eval()(x)
    return torch.export.load(str(out / meta["program"])).module()(x)


FAMILIES = [
    # (method, backbone, expected format)
    ("recast", "vit_tiny", "state_dict"),
    ("lora", "vit_tiny", "state_dict"),
    pytest.param("melo", "vit_tiny", "state_dict", marks=pytest.mark.slow),
    ("dora", "vit_tiny", "state_dict"),
    ("rosa", "vit_tiny", "state_dict"),
    ("inflora", "vit_tiny", "state_dict"),
    ("piggyback", "vit_tiny", "state_dict"),
    pytest.param("recast+lora", "vit_tiny", "state_dict", marks=pytest.mark.slow),
    pytest.param("recast+piggyback", "vit_tiny", "state_dict", marks=pytest.mark.slow),
    pytest.param("finetune", "vit_tiny", "state_dict", marks=pytest.mark.slow),
    ("adaptformer", "vit_tiny", "torch.export"),
    pytest.param("recast+adaptformer", "vit_tiny", "torch.export", marks=pytest.mark.slow),
    # resnet_tiny has no stock constructor (8-channel stem): every ResNet task exports as a merged program
    ("recast", "resnet_tiny", "torch.export"),
    pytest.param("piggyback", "resnet_tiny", "torch.export", marks=pytest.mark.slow),
    ("clr", "resnet_tiny", "torch.export"),
    ("hat", "resnet_tiny", "torch.export"),
    pytest.param("recast+clr", "resnet_tiny", "torch.export", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("method", "backbone", "fmt"), FAMILIES)
def test_export_matches_the_runs_own_model(runs, tmp_path, method, backbone, fmt):
    run = load_run(runs(method, backbone))
    res = json.loads((run.dir / "results.json").read_text())
    # the loaded run is the run's own model: it reproduces the final row of test accuracies exactly
    assert [run.evaluate(n) for n in res["tasks"]] == pytest.approx(res["acc_matrix"][-1], abs=1e-9)
    perturb(run)
    task = res["tasks"][1]
    x = torch.randn(3, 3, run.image_size, run.image_size)
    expected = run.logits(x, task)
    assert torch.isfinite(expected).all()
    meta = export_task(run, task, tmp_path / "exp")
    assert meta["format"] == fmt
    got = plain_logits(meta, tmp_path / "exp", x)
    assert got.shape == expected.shape == (3, run.task(task).num_classes)
    assert (got - expected).abs().max() <= TOLERANCE
    if fmt == "torch.export":
        assert meta["why_program"]
        # merged first: no RECAST template bank survives in the program (its layers are plain)
        assert "recast_banks" not in str(torch.export.load(str(tmp_path / "exp" / meta["program"])).graph_signature)
    # the task's own backbone state matters: task 1's head on task 0's backbone state gives other logits
    if any(not k.startswith("heads.") for k in run.states[1]):  # methods with per-task backbone state
        run.activate(res["tasks"][0])
        with torch.no_grad():
            foreign = run.model.heads[head_key(1)](run.model.backbone(x))
        assert (foreign - expected).abs().max() > 1e-2, "the perturbed task state should change the logits"


def test_export_loads_without_recast_bench(runs, tmp_path):
    """The README snippet runs in a fresh interpreter where importing recast_bench or baselines fails."""
    out = tmp_path / "exp"
    assert main(["export", str(runs("recast")), "--task", "syn1", "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    names = load_run(runs("recast")).task("syn1").class_names
    assert meta["class_names"] == names and len(set(names)) == 4  # the dataset's own names (synthetic: generated)
    assert meta["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.randn(2, 3, 32, 32)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    code = (
        "import sys; sys.modules['recast_bench'] = None; sys.modules['baselines'] = None\n"
        + meta["load"]
        + "from safetensors.torch import load_file\n"
        + "print(repr(model(load_file('../x.safetensors')['x']).tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.tensor(eval(proc.stdout.strip().splitlines()[-1]))  # noqa: S307 (our own subprocess's output)
    assert (got - load_run(runs("recast")).logits(x, "syn1")).abs().max() <= TOLERANCE
    assert "model.load_state_dict" in (out / "README.txt").read_text()


def test_pack_switches_tasks_by_name(runs, tmp_path):
    run_dir = runs("recast")
    pack = tmp_path / "tasks.safetensors"
    assert main(["pack", str(run_dir), "--out", str(pack)]) == 0
    direct, packed = load_run(run_dir), load_run(run_dir, pack=pack)
    x = torch.randn(2, 3, 32, 32)
    for name in ("syn1", "syn0", "syn1"):  # switching back and forth gives each task's own logits
        assert torch.equal(packed.logits(x, name), direct.logits(x, name))
    assert not torch.allclose(packed.logits(x, "syn0")[:, :3], packed.logits(x, "syn1")[:, :3])
    from safetensors import safe_open

    with safe_open(str(pack), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {f"{t}/{k}" for t in ("syn0", "syn1") for k in ("recast.coefficients", f"heads.t{t[-1]}.weight",
                                                                   f"heads.t{t[-1]}.bias")}  # fmt: skip
    assert json.loads(meta["tasks"]) == ["syn0", "syn1"] and meta["fingerprint"]


def test_pack_from_another_run_is_refused(runs, tmp_path, capsys):
    pack = tmp_path / "p.safetensors"
    assert main(["pack", str(runs("recast")), "--out", str(pack)]) == 0
    capsys.readouterr()
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(img)
    assert main(["predict", str(runs("lora")), str(img), "--task", "syn0", "--pack", str(pack)]) == 2
    assert "made from another run" in capsys.readouterr().err


def test_predict_cli_and_api(runs, tmp_path, capsys):
    from PIL import Image

    run_dir = runs("recast")
    paths = []
    for i, colour in enumerate([(250, 0, 0), (0, 250, 0)]):
        p = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (50, 40), colour).save(p)
        paths.append(p)
    capsys.readouterr()
    assert main(["predict", str(run_dir), *map(str, paths), "--task", "syn1", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(paths[0]) and len(lines) == 2 * (1 + 3)
    run = load_run(run_dir)
    names = run.task("syn1").class_names
    assert all(line.split("%", 1)[1].strip() in names for line in lines[1:4])

    pil = Image.open(paths[1])
    preds = run.predict([paths[0], pil, torch.zeros(3, 50, 50, dtype=torch.uint8)], task="syn1", top_k=2)
    assert [len(p) for p in preds] == [2, 2, 2]
    for p in preds:
        assert p[0][1] >= p[1][1] and all(n in names for n, _ in p)
    # the API's top-k are the softmax of the run's own model on the same preprocessing
    x = run.tasks_data[1].test[0][0]
    (top,) = run.predict([x], task="syn1", top_k=4)
    probs = run.logits(x[None], "syn1").softmax(-1)[0]
    assert sum(prob for _, prob in top) == pytest.approx(1.0, abs=1e-5)
    assert top[0][1] == pytest.approx(float(probs.max()), abs=1e-6)
    # a batch mixing tasks: each image under its own task, same answers as one task at a time
    mixed = run.predict([x, x, paths[0]], task=["syn1", "syn0", "syn1"], top_k=3)

    def same(a, b):  # noqa: ANN001, ANN202 (batch size may change the last float bit)
        return [n for n, _ in a] == [n for n, _ in b] and [p for _, p in a] == pytest.approx([p for _, p in b])

    assert same(mixed[0], run.predict(x, task="syn1", top_k=3)[0])
    assert same(mixed[1], run.predict(x, task="syn0", top_k=3)[0])
    assert same(mixed[2], run.predict(paths[0], task="syn1", top_k=3)[0])
    assert {n.split("-")[0] for n, _ in mixed[1]} == {"syn0"} and {n.split("-")[0] for n, _ in mixed[0]} == {"syn1"}
    assert len(mixed[1]) == 3 and len(run.predict(x, task="syn0", top_k=10)[0]) == 3  # syn0 has 3 classes


def _one_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_one_line_exit_2(runs, tmp_path, capsys):
    import shutil

    run_dir = runs("recast")
    capsys.readouterr()
    img = tmp_path / "ok.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    # unknown task
    assert main(["predict", str(run_dir), str(img), "--task", "nope"]) == 2
    assert "unknown task 'nope'" in _one_line(capsys)
    assert main(["export", str(run_dir), "--task", "nope", "--out", str(tmp_path / "e")]) == 2
    assert "unknown task 'nope'" in _one_line(capsys) and not (tmp_path / "e").exists()
    # undecodable image
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    assert main(["predict", str(run_dir), str(bad), "--task", "syn0"]) == 2
    assert "cannot decode image" in _one_line(capsys)
    # incomplete run: status not complete, or a task's files missing
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    res = json.loads((partial / "results.json").read_text())
    res.update(status="running", completed_tasks=1)
    (partial / "results.json").write_text(json.dumps(res))
    assert main(["export", str(partial), "--task", "syn0", "--out", str(tmp_path / "e2")]) == 2
    assert "incomplete (1 of 2 tasks)" in _one_line(capsys) and not (tmp_path / "e2").exists()
    res.update(status="complete", completed_tasks=2)
    (partial / "results.json").write_text(json.dumps(res))
    (partial / "tasks" / "syn1" / "head.safetensors").unlink()
    assert main(["predict", str(partial), str(img), "--task", "syn0"]) == 2
    assert "incomplete" in _one_line(capsys)
    assert main(["predict", str(tmp_path), str(img), "--task", "syn0"]) == 2
    assert "not a run directory" in _one_line(capsys)
    # an existing export directory is never overwritten without --force
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run_dir), "--task", "syn0", "--out", str(out)]) == 2
    assert "--force" in _one_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(run_dir), "--task", "syn0", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "model.json", "model.safetensors"]
    pack = tmp_path / "p.safetensors"
    pack.write_text("old")
    assert main(["pack", str(run_dir), "--out", str(pack)]) == 2
    assert "--force" in _one_line(capsys) and pack.read_text() == "old"


def test_avalanche_runs_are_refused_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "ewc"
    run_dir.mkdir()
    config = {"method_name": "ewc", "backbone": {"name": "vit_tiny"}, "method": {"ewc": {}}, "seed": 0}
    (run_dir / "results.json").write_text(json.dumps({"status": "complete", "completed_tasks": 1, "tasks": ["a"],
                                                      "config": config}))  # fmt: skip
    assert main(["export", str(run_dir), "--task", "a", "--out", str(tmp_path / "e")]) == 2
    assert "avalanche" in _one_line(capsys)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["recast+piggyback", "lora"])
def test_real_architectures_merge_into_stock_models(tmp_path, method):
    """ResNet-34 (torchvision) and ViT-S (timm) with random weights: merged task states load into the stock model."""
    from omegaconf import OmegaConf

    from recast_bench.backbones import get_spec, num_features
    from recast_bench.deploy.arch import architecture, build_plain, classifier_prefix
    from recast_bench.deploy.merge import leftover, merged_copy
    from recast_bench.engine.build import build_method
    from recast_bench.engine.method import RunContext
    from recast_bench.engine.model import TaskModel

    backbone = "resnet34" if method.startswith("recast") else "vit_small"
    spec = get_spec(backbone)
    torch.manual_seed(0)
    module = spec.build()
    model = TaskModel(module, num_features(module))
    m = build_method(method, OmegaConf.create({"recast": {"mimic_iters": 20}}), spec.family)
    m.ctx = RunContext(backbone_name=backbone, family=spec.family, cache_dir=str(tmp_path), seed=0)
    m.setup(model)
    head = model.add_head(0, 7)
    with torch.no_grad():
        for p in m.task_parameters(model).values():
            p.add_(
                0.02 * torch.randn_like(p)
            )  # flips about a third of Piggyback's mask bits (init 0.01, threshold 0.005)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x, 0)
    merged = merged_copy(model.backbone)
    arch = architecture(backbone, 7)
    plain = build_plain(arch).eval()
    assert leftover(merged, plain) == []
    state = {**merged.state_dict(), **{classifier_prefix(arch) + k: v for k, v in head.state_dict().items()}}
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (plain(x) - expected).abs().max() <= TOLERANCE


@pytest.mark.slow
def test_pack_benchmark_writes_sizes_and_switch_times(tmp_path):
    """The benchmark's JSON (figures are measured, not asserted): RECAST ViT-S ships 96 coefficients, < 1 KB."""
    from recast_bench.deploy.bench import SIX_CLASSES
    from recast_bench.deploy.bench import main as bench

    out = tmp_path / "bench.json"
    bench(
        ["--out", str(out), "--backbone", "vit_small", "--methods", "recast", "--repeats", "3", "--agnostic-batch", "1"]
    )
    r = json.loads(out.read_text())["methods"]["recast"]
    assert r["state_numbers_per_task"] == 96 and r["state_bytes_per_task"] == 384 < 1024
    assert r["pack"]["tasks"] == len(SIX_CLASSES)
    heads = sum((384 + 1) * c * 4 for c in SIX_CLASSES.values())
    assert r["pack"]["file_bytes"] > 6 * 384 + heads and r["switch_ms"] > 0 and r["forward_ms"] > 0
    # task-agnostic choice of an image over the six tasks: six switches and six forwards, timed
    assert r["agnostic_batch"] == 1 and r["agnostic_ms_per_image"] == r["agnostic_ms"] > 0
    assert 0 < r["agnostic_switch_share"] < 1 and r["agnostic_unbatched_ms_per_image"] > 6 * r["switch_ms"]
