"""Neural Mimicry: exact reconstruction on tiny timm/torchvision models, SVD vs random, losses, cache, artifacts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from recast_bench.backbones import build_backbone
from recast_bench.recast import artifacts
from recast_bench.recast.artifacts import load_recast, mimic_cached, save_recast
from recast_bench.recast.metrics import diversity, output_similarity, singular_value_entropy, template_frobenius
from recast_bench.recast.mimicry import MimicConfig, neural_mimicry, reconstruct, svd_init, weight_cosines
from recast_bench.recast.pipeline import load_recast_model, recast_backbone
from recast_bench.recast.surgery import RecastSpec, make_plan, target_weights


def _backbone(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(name, allow_random_init=True)[0].eval()


@pytest.mark.parametrize(
    ("name", "family", "spec"),
    [
        ("vit_tiny", "vit", RecastSpec(groups=2, templates=2, sets=2, target="attn+mlp")),
        ("resnet_tiny", "resnet", RecastSpec(sets=2)),
    ],
)
def test_exact_case_reproduces_original_logits(name, family, spec):
    # G * n >= layers per group (ViT: 2 blocks/group, n=2; ResNet: n = templated blocks per stage): SVD is exact.
    original = _backbone(name)
    model = copy.deepcopy(original)
    plan, result, targets, _ = recast_backbone(model, family, spec, MimicConfig(init="svd"), cache_dir=None)
    cos = weight_cosines(targets, reconstruct(plan, result.templates, result.coefficients))
    assert min(cos.values()) > 0.99999
    x = torch.randn(4, 3, 32, 32)
    sim = output_similarity(original, model, family, x)
    assert sim["logits_cosine"] >= 0.9999
    assert sim["feature_cosine_min"] >= 0.9999 and sim["top1_agreement"] == 1.0
    assert result.iters_run == 0  # exact: no refinement needed


def test_svd_init_beats_random_init_at_equal_steps():
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=1, templates=2, sets=2, target="mlp"))  # 4 layers share n=2
    targets = target_weights(vit, plan)
    for steps in (0, 10):
        best = {
            init: min(neural_mimicry(targets, plan, MimicConfig(init=init, iters=steps, patience=0)).history)
            for init in ("svd", "random")
        }
        # Same objective (SmoothL1 summed over modules, paper weights), same number of steps.
        assert best["svd"] < 0.9 * best["random"], (steps, best)


def test_svd_is_least_squares_optimal_and_pads_extra_templates():
    torch.manual_seed(0)
    w = torch.randn(3, 6, 5)
    t, c = svd_init(w, 2, sets=2)
    approx = torch.einsum("mn,nij->mij", c.mean(1), t)
    err = (approx - w).pow(2).sum()
    s = torch.linalg.svdvals(w.reshape(3, -1).double())
    torch.testing.assert_close(err.double(), s[2:].pow(2).sum(), rtol=1e-4, atol=1e-6)  # Eckart-Young bound
    t4, c4 = svd_init(w, 4, sets=1)  # more templates than members: exact, extra templates non-zero
    torch.testing.assert_close(torch.einsum("mn,nij->mij", c4.mean(1), t4), w, rtol=1e-4, atol=1e-5)
    assert t4[3].abs().sum() > 0 and c4[:, :, 3].abs().sum() == 0


def test_svd_scale_and_distinct_sets_keep_the_exact_mean():
    torch.manual_seed(0)
    w = torch.randn(2, 6, 5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    t, c = svd_init(w, 2, sets=3, generator=g, template_ratio=5.0, set_spread=0.5)
    # Mean of the K sets is the exact reconstruction ...
    torch.testing.assert_close(torch.einsum("mn,nij->mij", c.mean(1), t), w)
    # ... while the sets are distinct, spread by 0.5 of the mean's norm (RMS over sets) ...
    mean = c.mean(1, keepdim=True)
    spread = (c - mean).pow(2).sum(2).mean(1).sqrt() / mean.squeeze(1).norm(dim=1)
    torch.testing.assert_close(spread, torch.full((2,), 0.5, dtype=torch.float64))
    assert (c[:, 0] - c[:, 1]).abs().min() > 0
    # ... and each template has norm 5 x the RMS norm of the members.
    rms = (w.pow(2).sum((1, 2)).mean()).sqrt()
    torch.testing.assert_close(t.flatten(1).norm(dim=1), torch.full((2,), 5.0, dtype=torch.float64) * rms)


def test_paper_random_init_is_the_authors():
    from recast_bench.recast.mimicry import kaiming_templates, per_set_orthogonal
    from recast_bench.recast.surgery import BankPlan

    torch.manual_seed(0)
    c = per_set_orthogonal(3, 2, 4)  # every set its own unit vector (orthogonal_ on an (n, 1) set)
    torch.testing.assert_close(c.norm(dim=2), torch.ones(3, 2))
    assert (c[:, 0] - c[:, 1]).abs().max() > 0.1
    qkv = kaiming_templates(BankPlan("qkv_g0", "qkv", 0, 2, (768, 256)))  # fan_out = 768
    fc1 = kaiming_templates(BankPlan("fc1_g0", "fc1", 0, 2, (768, 256)))  # fan_in = 256
    assert abs(float(qkv.std()) - (2 / 768) ** 0.5) < 0.05 * (2 / 768) ** 0.5
    assert abs(float(fc1.std()) - (2 / 256) ** 0.5) < 0.05 * (2 / 256) ** 0.5


@pytest.mark.parametrize("loss", ["mse", "smoothl1", "smoothl1_noise", "vae", "vae_mse"])
def test_every_loss_runs_and_improves_from_random(loss):
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=2, templates=2, sets=2, target="mlp"))
    targets = target_weights(vit, plan)
    r = neural_mimicry(targets, plan, MimicConfig(loss=loss, init="random", iters=20))
    assert min(r.history[1:]) < r.history[0]
    assert set(r.coefficients) == set(plan.modules()) and all(c.shape == (2, 2) for c in r.coefficients.values())


def test_paper_settings_resolve_per_family():
    vit, res = MimicConfig().resolved("vit"), MimicConfig().resolved("resnet")
    assert (vit.lr, vit.step_size, vit.iters, vit.module_weights["fc1"]) == (0.1, 200, 1000, 2.0)
    assert (res.lr, res.step_size, res.iters) == (0.2, 500, 3000)
    assert res.module_weights == {"conv1": 3.5, "conv2": 2.5}
    # Authors' notebooks: random init, grad clip 1.0 both; coefficient noise 1e-4 on ViT only.
    assert vit.init == res.init == "random" and vit.grad_clip == res.grad_clip == 1.0
    assert (vit.loss, vit.noise_std, res.loss) == ("smoothl1_noise", 1e-4, "smoothl1")
    vae = MimicConfig(loss="vae").resolved("vit")
    assert (vae.iters, vae.vae_hidden, vae.vae_lr) == (2500, 8, 2e-3)
    with pytest.raises(ValueError, match="loss"):
        MimicConfig(loss="kl")
    with pytest.raises(ValueError, match="init"):
        MimicConfig(init="zeros")


def test_cache_is_reused(tmp_path, monkeypatch):
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=1, templates=2, sets=2))
    targets = target_weights(vit, plan)
    cfg = MimicConfig(iters=5)
    assert artifacts.cache_key(targets, plan, MimicConfig(iters=5, device="meta")) == artifacts.cache_key(
        targets, plan, cfg
    )  # the device is not part of the key
    first, key = mimic_cached(targets, plan, cfg, tmp_path)
    assert not first.from_cache and (tmp_path / "recast_mimicry" / key / "recast.safetensors").is_file()

    def boom(*a, **k):
        raise AssertionError("re-optimised despite a cache entry")

    monkeypatch.setattr(artifacts, "neural_mimicry", boom)
    second, key2 = mimic_cached(targets, plan, cfg, tmp_path)
    assert second.from_cache and key2 == key
    for k in first.templates:
        assert torch.equal(first.templates[k], second.templates[k])
    # Another config or other weights give another key (and would re-optimise).
    assert artifacts.cache_key(targets, plan, MimicConfig(iters=6)) != key
    for changed in (
        MimicConfig(iters=5, loss="smoothl1"),
        MimicConfig(iters=5, init="svd"),
        MimicConfig(iters=5, seed=1),
        MimicConfig(iters=5, noise_std=2e-4),
        MimicConfig(iters=5, template_ratio=2.0),
        MimicConfig(iters=5, set_spread=0.1),
        MimicConfig(iters=5, vae_hidden=16),
    ):
        assert artifacts.cache_key(targets, plan, changed) != key, changed
    other = {k: v + 1e-3 for k, v in targets.items()}
    assert artifacts.cache_key(other, plan, cfg) != key


def test_artifacts_round_trip_to_identical_outputs(tmp_path):
    original = _backbone("vit_tiny")
    model = copy.deepcopy(original)
    plan, result, _, _ = recast_backbone(model, "vit", RecastSpec(groups=1, templates=2), MimicConfig(iters=3), None)
    save_recast(tmp_path / "art", plan, result.templates, result.coefficients)
    fresh = _backbone("vit_tiny", seed=123)  # different weights everywhere, except what the artifact restores
    fresh.load_state_dict({k: v for k, v in original.state_dict().items()}, strict=True)
    load_recast_model(fresh, tmp_path / "art")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    plan2, t, c, meta = load_recast(tmp_path / "art")
    assert plan2.to_dict() == plan.to_dict() and meta["version"] == 1


def test_diversity_metrics_values():
    eye = torch.eye(4)
    assert abs(singular_value_entropy(eye[None]) - torch.log(torch.tensor(4.0)).item()) < 1e-6
    rank1 = torch.zeros(1, 4, 4)
    rank1[0, 0, 0] = 3.0
    assert singular_value_entropy(rank1) < 1e-6
    t = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), 2 * torch.ones(2, 2)])
    # Appendix A.3: sum over pairs i < j / (n (n - 1)); pair distances 2, 4, 2, n = 3: 8 / 6.
    assert abs(template_frobenius(t) - (2 + 4 + 2) / 6) < 1e-9
    # Entropy by hand: singular values 3 and 1 -> p = (3/4, 1/4) (s normalised); (9/10, 1/10) with power=2.
    d = torch.diag(torch.tensor([3.0, 1.0]))[None]
    h = lambda p: -sum(x * torch.log(torch.tensor(x)).item() for x in p)  # noqa: E731
    assert abs(singular_value_entropy(d) - h([0.75, 0.25])) < 1e-6
    assert abs(singular_value_entropy(d, power=2) - h([0.9, 0.1])) < 1e-6
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=2, templates=2, sets=2))
    r = neural_mimicry(target_weights(vit, plan), plan, MimicConfig(iters=20))
    d = diversity(plan, r.templates, r.coefficients)
    assert set(d["groups"]) == {"0", "1"} and len(d["banks"]) == 4
    g0 = d["groups"]["0"]
    assert g0["frobenius"] > 0 and g0["entropy"] > 0 and -1.0 <= g0["coef_similarity"] <= 1.0
    # intra-group similarity of layer 0 vs 1: concatenated fc1+fc2 coefficients of each layer
    c = r.coefficients
    a = torch.cat([c["blocks.0.mlp.fc1"].flatten(), c["blocks.0.mlp.fc2"].flatten()])
    b = torch.cat([c["blocks.1.mlp.fc1"].flatten(), c["blocks.1.mlp.fc2"].flatten()])
    assert abs(g0["coef_similarity"] - float(F.cosine_similarity(a, b, dim=0))) < 1e-5


def test_mimicry_loss_arms_give_different_models():
    # Figure 5a / Table 6: under the paper's init every objective optimises from the same start to its own model.
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=2, templates=2, sets=2, target="mlp"))
    targets = target_weights(vit, plan)
    coefs = {
        loss: neural_mimicry(targets, plan, MimicConfig(loss=loss, init="random", iters=15)).coefficients
        for loss in ("smoothl1", "mse", "smoothl1_noise", "vae")
    }
    names = list(coefs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = max(float((coefs[a][m] - coefs[b][m]).abs().max()) for m in plan.modules())
            assert diff > 1e-6, (a, b, diff)


def test_mimic_loss_experiment_sets_the_paper_init():
    from pathlib import Path

    import yaml

    from recast_bench.recast.method import RecastConfig

    exp = yaml.safe_load((Path(__file__).parents[1] / "conf/experiment/recast_mimic_loss.yaml").read_text())
    rc = exp["method"]["recast"]
    arms = exp["hydra"]["sweeper"]["params"]["method.recast.mimic_loss"].split(",")
    assert rc["mimic_init"] == "random" and rc["variant"] == "paper" and len(arms) == 5
    for arm in arms:
        assert RecastConfig(**{**rc, "mimic_loss": arm}).mimic_config().init == "random"


def test_vae_is_the_authors_variant():
    vit = _backbone("vit_tiny")
    plan = make_plan(vit, "vit", RecastSpec(groups=2, templates=2, sets=2, target="mlp"))
    targets = target_weights(vit, plan)
    r = neural_mimicry(targets, plan, MimicConfig(loss="vae", iters=12))
    assert r.iters_run == 12
    # The encoder sees the fully flattened weight: its first layer is (hidden 8) x (out * in).
    from recast_bench.recast.mimicry import CoefficientEncoder

    enc = CoefficientEncoder(int(torch.Size(plan.banks[0].weight_shape).numel()), 8, 2, 2)
    assert enc.net[0].weight.shape == (8, torch.Size(plan.banks[0].weight_shape).numel())
    # The kept copy per bank is the most cosine-similar one seen: never worse than the same seed's start.
    r0 = neural_mimicry(targets, plan, MimicConfig(loss="vae", iters=0))

    def bank_cos(res):
        cos = weight_cosines(targets, reconstruct(plan, res.templates, res.coefficients))
        return [sum(cos[m] for m in b.modules) / len(b.modules) for b in plan.banks]

    assert all(a >= b - 1e-6 for a, b in zip(bank_cos(r), bank_cos(r0)))
    assert sum(bank_cos(r)) > sum(bank_cos(r0))
