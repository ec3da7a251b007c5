"""ResNet baselines (Piggyback, HAT, CLR): exact counts on ResNet-34, forward equations, gradient rules, RECAST+X."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.clr import Clr, ClrConfig, ClrLayer
from baselines.hat import GatedBatchNorm, Hat, HatConfig, resnet_topology
from baselines.piggyback import Binarize, Piggyback, PiggybackConfig, PiggybackLayer, pack_bits, unpack_bits
from recast_bench.backbones.resnet import build_resnet34, build_resnet_tiny
from recast_bench.config import TrainerConfig
from recast_bench.engine.build import build_method
from recast_bench.engine.learner import trainable_count
from recast_bench.engine.method import RunContext
from recast_bench.engine.model import TaskModel
from recast_bench.engine.step import TrainStep
from recast_bench.registry import METHODS, load_all


def tiny_model(seed: int = 0) -> TaskModel:
    torch.manual_seed(seed)
    model = TaskModel(build_resnet_tiny(), 64)
    model.add_head(0, 3)
    return model.eval()


def make(cls: type, cfg: object, model: TaskModel) -> object:
    method = cls(cfg)
    method.ctx = RunContext(backbone_name="resnet_tiny", family="resnet", seed=0)
    method.setup(model)
    return method


# ---- analytical counts on the real ResNet-34 architecture (random weights) -----------------------------------
def test_clr_default_count_resnet34_is_tables_4e3_p() -> None:
    backbone = build_resnet34()
    p_resnet34 = sum(p.numel() for p in backbone.parameters()) + 512 * 1000 + 1000  # with the ImageNet head
    model = TaskModel(backbone, 512)
    clr = make(Clr, ClrConfig(), model)  # official default Ghost_reduced_v1: no 1x1 convs
    counts = clr.count_breakdown(model)
    assert counts == {"reprogram": 68_544, "bn": 17_024}  # 7,616 channels * 9; BN affine 2 * 8,512
    assert trainable_count(clr, model) == 85_568
    # Table 1: CLR 4e-3 P. 85,568 = 3.93e-3 P; all convs (93,632) would be 4.30e-3 P, also "4e-3" at one digit but
    # further off: the official default (Ghost_reduced_v1) is the deciding source, the table only agrees with it.
    assert f"{85_568 / p_resnet34:.0e}" == "4e-03"
    assert abs(85_568 / p_resnet34 - 4e-3) < abs(93_632 / p_resnet34 - 4e-3)


def test_clr_count_resnet34_all_convs_is_76608() -> None:
    model = TaskModel(build_resnet34(), 512)
    clr = make(Clr, ClrConfig(skip_1x1=False), model)
    counts = clr.count_breakdown(model)
    # 8,512 output channels over stem, 32 block convs and 3 downsample convs, one 3x3 kernel each.
    assert counts["reprogram"] == 76_608
    assert counts["bn"] == 2 * 8_512
    assert len(clr.layers(model)) == 1 + 32 + 3


def test_clr_reduced_variant_skips_1x1() -> None:
    model = TaskModel(build_resnet34(), 512)
    clr = make(Clr, ClrConfig(skip_1x1=True), model)
    assert clr.count_breakdown(model)["reprogram"] == 76_608 - 9 * (128 + 256 + 512)
    assert not any(".downsample." in n for n in clr.layers(model))


def test_piggyback_count_is_number_of_conv_weights_resnet34() -> None:
    backbone = build_resnet34()
    conv_weights = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, nn.Conv2d))
    model = TaskModel(backbone, 512)
    pb = make(Piggyback, PiggybackConfig(), model)
    assert sum(p.numel() for p in pb.task_parameters(model).values()) == conv_weights == 21_267_648


# ---- Piggyback ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_piggyback_forward_and_straight_through_gradient(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, padding=1, bias=True) if kind == "conv" else nn.Linear(5, 4)
    x = torch.randn(2, 3, 6, 6) if kind == "conv" else torch.randn(2, 5)
    layer = PiggybackLayer(base, mask_init=1e-2, threshold=5e-3)
    with torch.no_grad():
        layer.mask.copy_(torch.rand_like(layer.mask) * 1e-2)  # about half the entries above 5e-3
    binary = (layer.mask > 5e-3).float()
    assert 0 < binary.mean() < 1
    y = layer(x)
    w_eff = (base.weight * binary).detach().requires_grad_(True)
    ref = F.conv2d(x, w_eff, base.bias, padding=1) if kind == "conv" else F.linear(x, w_eff, base.bias)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    # Straight-through: dL/dmask = dL/dbinary = W * dL/dW_eff, also for entries the threshold switched off.
    torch.testing.assert_close(layer.mask.grad, base.weight.detach() * w_eff.grad)
    assert (layer.mask.grad[binary == 0] != 0).any()


def test_piggyback_threshold_change_is_a_graph_input_not_a_recompile() -> None:
    """The authors' init re-draws the threshold every task: it is a 0-dim buffer, so a compiled layer keeps its graph
    (as a Python float it was baked into the graph: one recompile per task)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    layer = PiggybackLayer(nn.Conv2d(2, 3, 3, bias=False), mask_init=1e-2, threshold=5e-3)
    with torch.no_grad():
        layer.mask.copy_(torch.linspace(-5e-3, 5e-3, layer.mask.numel()).view_as(layer.mask))
    x = torch.randn(1, 2, 5, 5)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(layer, backend="eager")
    try:
        for t in (1.9e-3, -4e-3, 0.0):  # as reset_mask draws them
            layer.threshold = t
            want = F.conv2d(x, layer.base.weight * (layer.mask > t).float())
            torch.testing.assert_close(compiled(x), want)
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_binarize_thresholds_strictly() -> None:
    m = torch.tensor([4.9e-3, 5e-3, 5.1e-3, -1.0, 1.0])
    assert Binarize.apply(m, 5e-3).tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]


def test_pack_bits_matches_numpy_and_round_trips() -> None:
    bits = torch.rand(3, 5, 7) > 0.5  # 105 entries: not a multiple of 8
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == 14
    np.testing.assert_array_equal(packed.numpy(), np.packbits(bits.numpy().ravel()))
    assert torch.equal(unpack_bits(packed, bits.shape), bits)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(packed[:-1], bits.shape)


def test_piggyback_state_is_one_bit_per_weight_and_restores_outputs() -> None:
    model = tiny_model()
    pb = make(Piggyback, PiggybackConfig(), model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pb.task_parameters(model).values():
            p.copy_(torch.rand_like(p) * 1e-2)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x, 0)
    state = pb.task_state(model)
    n = sum(p.numel() for p in pb.task_parameters(model).values())
    assert all(v.dtype == torch.uint8 for v in state.values())
    assert sum(v.numel() for v in state.values()) == sum(
        (p.numel() + 7) // 8 for p in pb.task_parameters(model).values()
    )
    assert sum(v.numel() for v in state.values()) < n / 7
    pb.on_task_start(model, 1, None, None)  # resets to all-ones masks: outputs change
    assert not torch.equal(model(x, 0), expected)
    pb.load_task_state(model, state)
    assert torch.equal(model(x, 0), expected)


def test_piggyback_skip_downsample_and_vit_targets() -> None:
    model = tiny_model()
    pb = make(Piggyback, PiggybackConfig(skip_downsample=True), model)
    names = set(pb.layers(model))
    assert "backbone.layer2.0.downsample.0" not in names and "backbone.layer2.0.conv1" in names
    assert len(names) == 1 + 32
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    vit.reset_classifier(0)
    vmodel = TaskModel(vit, 48)
    vpb = Piggyback(PiggybackConfig())
    vpb.ctx = RunContext(family="vit")
    vpb.setup(vmodel)
    vnames = set(vpb.layers(vmodel))
    assert {"backbone.blocks.0.attn.qkv", "backbone.blocks.1.mlp.fc2", "backbone.patch_embed.proj"} <= vnames
    assert len(vnames) == 1 + 2 * 4
    assert vmodel.backbone(torch.randn(1, 3, 32, 32)).shape == (1, 48)


# ---- CLR ---------------------------------------------------------------------------------------------------------
def test_clr_is_identity_at_init() -> None:
    model = tiny_model()
    x = torch.randn(2, 3, 32, 32)
    before = model(x, 0)
    clr = make(Clr, ClrConfig(), model)
    assert torch.equal(model(x, 0), before)
    assert all(isinstance(m, ClrLayer) for m in clr.layers(model).values())


def test_clr_layer_is_channelwise_conv_after_base() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    layer = ClrLayer(base)
    with torch.no_grad():
        layer.reprogram.normal_()
    x = torch.randn(2, 3, 9, 9)
    y = layer(x)
    z = base(x)
    for c in range(4):  # channel c of the output only depends on channel c of conv(x), through kernel c
        ref = F.conv2d(z[:, c : c + 1], layer.reprogram[c : c + 1], padding=1)
        torch.testing.assert_close(y[:, c : c + 1], ref)


def test_clr_trains_bn_per_task_and_restarts_each_task() -> None:
    model = tiny_model()
    clr = make(Clr, ClrConfig(), model)
    params = clr.task_parameters(model)
    assert "backbone.bn1.weight" in params and "backbone.layer1.0.conv1.reprogram" in params
    assert "backbone.bn1.running_mean" in clr.task_buffers(model)
    assert not any(k.endswith("base.weight") for k in params)
    with torch.no_grad():
        params["backbone.layer1.0.conv1.reprogram"].add_(1.0)
        params["backbone.bn1.weight"].add_(1.0)
    clr.on_task_start(model, 1, None, None)
    x = torch.randn(2, 3, 32, 32)
    fresh = tiny_model()
    assert torch.equal(model(x, 0), fresh(x, 0))
    loss = clr.training_loss(model, 0, torch.tensor(0.0), None, None)
    assert loss.item() > 0  # the official L2-norm penalty
    # It covers the running task's classifier too (official reg_params: fc + BN + kernels).
    model.active_task = 0
    head = model.heads["t0"]
    norms = [p.norm() for p in clr.task_parameters(model).values()] + [head.weight.norm(), head.bias.norm()]
    torch.testing.assert_close(loss, clr.cfg.reg_lambda * torch.stack(norms).sum())
    with torch.no_grad():
        head.weight.mul_(3.0)
    assert clr.training_loss(model, 0, torch.tensor(0.0), None, None) > loss


class _GeneratedConv(nn.Module):
    """A conv whose weight is computed (as RECAST's ReparamConv2d): not an nn.Conv2d."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        for a in ("stride", "padding", "dilation", "groups", "in_channels", "out_channels", "kernel_size", "bias"):
            setattr(self, a, getattr(conv, a))

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight * 1.0


def test_piggyback_recast_authors_init_on_generated_and_plain_convs() -> None:
    gen = PiggybackLayer(_GeneratedConv(nn.Conv2d(16, 32, 3)), 1e-2, 5e-3, init="recast_authors")
    plain = PiggybackLayer(nn.Conv2d(16, 32, 3), 1e-2, 5e-3, init="recast_authors")
    for layer in (gen, plain):
        layer.reset_mask(torch.Generator().manual_seed(0))
    # Generated: U(-1e-2, 1e-2) + 5e-3 against a threshold drawn from U(-5e-3, 5e-3): many weights start off.
    assert gen.generated and float(gen.mask.min()) >= -5e-3 and float(gen.mask.max()) <= 1.5e-2
    assert abs(gen.threshold) <= 5e-3 and 0.2 < float(gen.binary_mask().float().mean()) < 0.8
    # Plain (the authors' state-dict loader): U(0.49, 0.51) against threshold 0, all on and far from flipping.
    assert not plain.generated and plain.threshold == 0.0 and float(plain.mask.min()) >= 0.49
    bits = gen.binary_mask()
    gen.set_binary_mask(bits)
    assert torch.equal(gen.binary_mask(), bits)
    model = tiny_model()
    pb = make(Piggyback, PiggybackConfig(), model)  # init auto, no generated layer: the official init
    assert {m.init for m in pb.layers(model).values()} == {"official"}


# ---- HAT -----------------------------------------------------------------------------------------------------------
def test_hat_gate_equation_and_annealing() -> None:
    bn = nn.BatchNorm2d(4).eval()
    gated = GatedBatchNorm(bn, smax=400.0)
    with torch.no_grad():
        gated.embedding.copy_(torch.tensor([-1.0, 0.0, 1e-3, 2.0]))
    x = torch.randn(2, 4, 3, 3)
    gated.eval()  # evaluation uses smax
    torch.testing.assert_close(gated(x), bn(x) * torch.sigmoid(400 * gated.embedding).view(1, -1, 1, 1))
    assert gated.gate().tolist()[0] == 0.0 and gated.gate().tolist()[3] == 1.0
    gated.train()
    bn.eval()
    gated.s = 2.5
    torch.testing.assert_close(gated(x), bn(x) * torch.sigmoid(2.5 * gated.embedding).view(1, -1, 1, 1))

    model = tiny_model()
    hat = make(Hat, HatConfig(), model)
    hat.on_train_batch_start(model, 0, 10, 0)
    assert all(g.s == pytest.approx(1 / 400) for g in hat.gates(model).values())
    hat.on_train_batch_start(model, 5, 10, 0)
    assert next(iter(hat.gates(model).values())).s == pytest.approx((400 - 1 / 400) * 0.5 + 1 / 400)


def test_hat_annealed_scale_is_a_graph_input_not_a_recompile() -> None:
    """The per-batch ``s`` lives in a 0-dim buffer written in place, so a compiled gate keeps one training graph
    while ``s`` anneals (as a Python float it was a guarded constant: one more graph once it changed)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    bn = nn.BatchNorm2d(4).eval()
    gated = GatedBatchNorm(bn, smax=400.0).train()
    bn.eval()
    with torch.no_grad():
        gated.embedding.copy_(torch.tensor([-1.0, 0.0, 0.3, 2.0]))
    x = torch.randn(2, 4, 3, 3)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(gated, backend="eager")
    try:
        for s in (1 / 400, 2.5, 100.0, 400.0):  # as Hat.on_train_batch_start sets it
            gated.s = s
            torch.testing.assert_close(compiled(x), bn(x) * torch.sigmoid(s * gated.embedding).view(1, -1, 1, 1))
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_hat_topology_follows_the_residual_stream() -> None:
    plan = {m.conv: m for m in resnet_topology(build_resnet_tiny())}
    assert plan["conv1"].inputs == () and plan["conv1"].out == "bn1"
    assert plan["layer1.0.conv1"].inputs == ("bn1",)
    assert plan["layer1.0.conv2"].inputs == ("layer1.0.bn1",)
    assert plan["layer2.0.downsample.0"].out == "layer2.0.downsample.1"
    assert set(plan["layer2.1.conv1"].inputs) == {"layer2.0.bn2", "layer2.0.downsample.1"}
    assert set(plan["layer2.2.conv1"].inputs) == {"layer2.1.bn2", "layer2.0.bn2", "layer2.0.downsample.1"}


def test_hat_stream_mask_zero_means_zero_activations() -> None:
    # The input-mask rule relies on: a channel closed in every gate feeding the stream is exactly zero.
    model = tiny_model()
    hat = make(Hat, HatConfig(), model)
    hat.on_task_start(model, 0, None, None)
    feeds = {"bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"}
    with torch.no_grad():
        for n, g in hat.gates(model).items():
            if n in feeds:
                g.embedding[0] = -6.0
    out = {}
    model.backbone.layer1.register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    model.eval()
    model(torch.randn(2, 3, 32, 32), 0)
    assert torch.count_nonzero(out["y"][:, 0]) == 0 and torch.count_nonzero(out["y"][:, 1]) > 0


def test_hat_gradient_masking_freezes_units_of_previous_tasks() -> None:
    model = tiny_model()
    hat = make(Hat, HatConfig(), model)
    model.train()
    hat.on_task_start(model, 0, None, None)
    with torch.no_grad():  # task 0 uses exactly the first half of every layer's units
        for g in hat.gates(model).values():
            half = g.embedding.numel() // 2
            g.embedding[:half] = 6.0
            g.embedding[half:] = -6.0
    hat.on_task_end(model, 0, None, None)
    assert all(g.cumulative.sum() == g.cumulative.numel() // 2 for g in hat.gates(model).values())

    hat.on_task_start(model, 1, None, None)
    model.add_head(1, 3)
    for p in hat.shared_parameters(model).values():
        p.requires_grad_(True)
    before = {k: v.detach().clone() for k, v in hat.shared_parameters(model).items()}
    hat.on_train_batch_start(model, 3, 4, 0)
    logits = model(torch.randn(4, 3, 32, 32), 1)
    loss = hat.training_loss(model, 1, F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])), logits, None)
    loss.backward()
    hat.on_after_backward(model)
    w = model.backbone.layer2.get_submodule("1.conv1").weight
    half_out, half_in = w.shape[0] // 2, w.shape[1] // 2
    assert torch.count_nonzero(w.grad[:half_out, :half_in]) == 0  # used by task 0 on both sides: frozen
    assert torch.count_nonzero(w.grad[half_out:]) > 0  # free output units still learn
    stem = model.backbone.conv1.weight  # input is the image (always used): mask is 1 - a_prev[out]
    assert torch.count_nonzero(stem.grad[: stem.shape[0] // 2]) == 0
    torch.optim.SGD(list(hat.shared_parameters(model).values()), lr=0.05).step()
    after = hat.shared_parameters(model)
    for name, old in before.items():
        out_n, in_n = old.shape[0] // 2, old.shape[1] // 2
        cols = slice(None) if name == "backbone.conv1.weight" else slice(0, in_n)
        assert torch.equal(after[name][:out_n, cols], old[:out_n, cols]), name


def test_hat_regulariser_and_state_split() -> None:
    model = tiny_model()
    hat = make(Hat, HatConfig(c=0.75), model)
    hat.on_task_start(model, 0, None, None)
    model.train()
    gates = torch.cat([g.gate() for g in hat.gates(model).values()])
    loss = hat.training_loss(model, 0, torch.tensor(1.0), None, None)
    torch.testing.assert_close(loss, 1.0 + 0.75 * gates.mean())
    assert all(k.endswith("cumulative") for k in hat.shared_buffers(model))
    assert set(hat.shared_parameters(model)) == {f"backbone.{m.conv}.weight" for m in hat.topology}
    assert any(k.endswith(".embedding") for k in hat.task_parameters(model))
    assert any(k.endswith(".bn.running_var") for k in hat.task_buffers(model))
    assert Hat.isolates_tasks is False


def official_plateau(losses: list[float], lr: float = 0.05, factor: float = 3, patience: int = 5, lr_min: float = 1e-4):
    """Reference: the lr each epoch trained at, and the epoch the official ``Appr.train`` loop breaks at (None)."""
    best, left, lrs = float("inf"), patience, []
    for e, loss in enumerate(losses):
        lrs.append(lr)
        if loss < best:
            best, left = loss, patience
            continue
        left -= 1
        if left <= 0:
            lr /= factor
            if lr < lr_min:
                return lrs, e
            left = patience
    return lrs, None


def engine_plateau(hat: Hat, losses: list[float]) -> tuple[list[float], int | None]:
    """The same through the method's hooks, stepped as Lightning steps it (``TaskModule.lr_scheduler_step``)."""
    from recast_bench.config import TrainerConfig

    groups = [{"params": [nn.Parameter(torch.zeros(1))]}, {"params": [nn.Parameter(torch.zeros(1))]}]  # head, method
    opt = torch.optim.SGD(groups, lr=hat.cfg.lr)
    conf = hat.lr_scheduler(opt, TrainerConfig())
    assert conf["monitor"] == "val/loss" and conf["interval"] == "epoch" and conf["frequency"] == 1
    lrs = []
    for e, loss in enumerate(losses):
        lrs.append(opt.param_groups[0]["lr"])
        conf["scheduler"].step(loss)
        if all(g["lr"] < hat.stop_below_lr() for g in opt.param_groups):
            return lrs, e
    return lrs, None


def test_hat_official_schedule_divides_by_3_after_5_flat_epochs_and_stops_below_1e4() -> None:
    hat = Hat(HatConfig())
    assert hat.selection() == ("val/loss", "min") and hat.stop_below_lr() == 1e-4
    # Epoch 1 improves; epochs 2..6 do not (an equal loss is no improvement): the 5th of them divides the lr by 3.
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.92, 0.93, 0.8, 0.85]
    lrs, stop = engine_plateau(hat, losses)
    assert lrs[:7] == [0.05] * 7 and lrs[7] == pytest.approx(0.05 / 3) and lrs[8] == pytest.approx(0.05 / 3)
    assert stop is None
    # A flat loss after epoch 0: a division every 5 epochs; the 6th (0.05 / 3**6 = 6.9e-5 < 1e-4) ends the task.
    lrs, stop = engine_plateau(hat, [1.0] * 100)
    assert stop == 30 and lrs[-1] == pytest.approx(0.05 / 3**5)
    # Any sequence: the same lr every epoch and the same last epoch as the official loop.
    rng = np.random.default_rng(0)
    for _ in range(20):
        walk = list(np.cumsum(rng.normal(0.0, 1.0, 100)))
        (mine, my_stop), (ref, ref_stop) = engine_plateau(hat, walk), official_plateau(walk)
        assert my_stop == ref_stop and mine == pytest.approx(ref, rel=1e-12)
    paper = Hat(HatConfig(schedule="paper"))
    assert paper.lr_scheduler(None, None) is None and paper.stop_below_lr() is None  # the engine's StepLR
    assert paper.selection() == ("val/acc", "max")


def test_hat_run_selects_the_lowest_val_loss_restores_it_before_on_task_end_and_stops_early(
    run_args, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    """Checked on the learner itself: every validation's metrics as offered to its selection, the selected epoch's
    snapshot, and HAT's parameters when on_task_end runs (engine/method.py: after the best epoch is restored)."""
    import json

    from recast_bench.cli import main
    from recast_bench.engine.learner import EpochSelection

    offered: list[tuple[EpochSelection, int, dict[str, float]]] = []
    at_task_end: list[tuple[EpochSelection, dict[str, torch.Tensor]]] = []
    real_offer, real_end = EpochSelection.offer, Hat.on_task_end

    def offer(self, epoch, metrics):  # noqa: ANN001, ANN202
        offered.append((self, epoch, dict(metrics)))
        real_offer(self, epoch, metrics)

    def on_task_end(self, model, task_index, task, loader):  # noqa: ANN001, ANN202
        emb = {f"task/{k}": v.detach().clone() for k, v in self.task_parameters(model).items()}
        at_task_end.append((offered[-1][0], emb))
        real_end(self, model, task_index, task, loader)

    monkeypatch.setattr(EpochSelection, "offer", offer)
    monkeypatch.setattr(Hat, "on_task_end", on_task_end)
    out = tmp_path / "hat"
    # lr_min above lr / 3 and patience 2: two epochs in a row without a lower val loss end the task.
    extra = ["trainer.epochs=6", "method.hat.lr_patience=2", "method.hat.lr_min=0.02"]
    assert main(run_args("hat", backbone="resnet_tiny", out=out, extra=extra)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["selection"]["metric"] == "val/loss" and res["selection"]["mode"] == "min"
    assert len(at_task_end) == len(res["tasks"])
    stopped = by_acc = 0
    for t, (selection, params) in enumerate(at_task_end):
        rows = [m for sel, _, m in offered if sel is selection]
        losses, acc = [m["val/loss"] for m in rows], [m["val/acc"] for m in rows]
        best = min(losses)
        assert res["best_epoch"][t] == selection.epoch == max(e for e, v in enumerate(losses) if v == best)
        assert res["val_acc"][t] == pytest.approx(acc[selection.epoch], abs=1e-4)
        # on_task_end saw the selected epoch's parameters (restored), not the last epoch's.
        assert params.keys() <= selection.state.keys()
        assert all(torch.equal(v, selection.state[k]) for k, v in params.items())
        # Training ran until (and including) the epoch the official loop breaks at, and no further.
        _, stop = official_plateau(losses, patience=2, lr_min=0.02)
        assert len(losses) == (6 if stop is None else stop + 1)
        stopped += stop is not None
        by_acc += selection.epoch != max(e for e, a in enumerate(acc) if a == max(acc))
    assert stopped, "no task stopped early: the test no longer exercises the stop"
    assert by_acc, "val accuracy picks the same epochs: the test no longer tells the two selections apart"
    assert any(sel.epoch != sum(s is sel for s, _, _ in offered) - 1 for sel, _ in at_task_end), (
        "every task selected its last epoch: the test no longer shows the restore happens before on_task_end"
    )


@pytest.mark.parametrize(
    ("cls", "bad", "match"),
    [
        (PiggybackConfig, {"mask_init": 1e-3}, "mask_init"),
        (HatConfig, {"smax": 1.0}, "smax"),
        (HatConfig, {"momentum": 0.9}, "momentum"),
        (HatConfig, {"schedule": "cosine"}, "schedule"),
        (HatConfig, {"lr_factor": 1.0}, "lr_factor"),
        (ClrConfig, {"kernel_size": 2}, "kernel_size"),
    ],
)
def test_configs_reject_bad_values(cls: type, bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**bad)


# ---- RECAST + X ------------------------------------------------------------------------------------------------------
def test_recast_plus_clr_stores_bn_statistics_once_and_runs_one_optimiser_as_recorded(tmp_path) -> None:  # noqa: ANN001
    from recast_bench.engine.learner import unfreeze_for_task
    from recast_bench.engine.module import build_optimizer
    from recast_bench.errors import UserError

    load_all()
    cfg = {"recast": {"mimic_iters": 5, "cache": False}}
    method = build_method("recast+clr", cfg, "resnet")
    method.ctx = RunContext(backbone_name="resnet_tiny", family="resnet", cache_dir=str(tmp_path))
    model = tiny_model()
    method.setup(model)
    method.on_task_start(model, 0, None, None)
    recast, clr = method.parts
    bn = recast.task_buffers(model)  # bn=per_task: every BN's running mean and variance, packed by RECAST
    assert bn and set(bn) <= set(clr.task_buffers(model))  # CLR claims the same tensors (its per-task BN)
    state = method.task_state(model)
    assert state["recast.bn_statistics"].numel() == sum(v.numel() for v in bn.values())
    assert not set(bn) & set(state)  # once: not again per tensor from CLR
    assert set(state) == {"recast.coefficients", "recast.bn_statistics", *(set(clr.task_state(model)) - set(bn))}
    before = {k: v.clone() for k, v in bn.items()}
    with torch.no_grad():
        for v in bn.values():
            v.add_(1.0)
    method.load_task_state(model, state)  # restored from RECAST's packed copy
    assert all(torch.equal(bn[k], before[k]) for k in bn)

    # One optimiser, RECAST's AdamW; CLR's groups (its official Adam, lr 1e-3, no weight decay) update exactly as
    # Adam would, so what is recorded (method.clr.optimizer=adam) is what runs.
    opt = build_optimizer(model, method, unfreeze_for_task(model, method, 0))
    assert type(opt) is torch.optim.AdamW and clr.cfg.optimizer == "adam" and clr.cfg.weight_decay == 0
    clr_params = {id(p) for p in clr.task_parameters(model).values()}
    clr_groups = [g for g in opt.param_groups if any(id(p) in clr_params for p in g["params"])]
    assert clr_groups and all(g["weight_decay"] == 0 and g["lr"] == clr.cfg.lr for g in clr_groups)
    a = torch.randn(50, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    adam, adamw = torch.optim.Adam([a], lr=1e-3), torch.optim.AdamW([b], lr=1e-3, weight_decay=0.0)
    for i in range(3):
        g = torch.randn(50, generator=torch.Generator().manual_seed(i))
        a.grad, b.grad = g.clone(), g.clone()
        adam.step()
        adamw.step()
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="one adamw optimiser"):  # one that would not run as recorded: refused
        build_method("recast+clr", {**cfg, "clr": {"optimizer": "sgd"}}, "resnet")


@pytest.mark.parametrize("adapter", ["piggyback", "clr"])
def test_recast_plus_adapter_builds_and_trains(adapter: str, tmp_path) -> None:  # noqa: ANN001
    load_all()
    if "recast" not in METHODS:
        pytest.skip("recast is not registered yet")
    cfg = {"recast": {"mimic_iters": 5, "cache": False}}
    method = build_method(f"recast+{adapter}", cfg, "resnet")
    method.ctx = RunContext(backbone_name="resnet_tiny", family="resnet", cache_dir=str(tmp_path))
    model = tiny_model()
    method.setup(model)
    method.on_task_start(model, 0, None, None)
    params = {**method.task_parameters(model), **method.shared_parameters(model)}
    coeffs = {k: p for k, p in params.items() if k.endswith("coefficients")}
    own = {k: p for k, p in params.items() if not k.endswith("coefficients")}
    assert coeffs and own
    # The adapter wrapped the generated-weight layer: the coefficients live under the adapter's ``base``.
    assert any(".base.coefficients" in k for k in coeffs)
    if adapter == "piggyback":  # init auto: the authors' RECAST+Piggyback init, since a masked weight is generated
        layers = [m for m in model.modules() if isinstance(m, PiggybackLayer)]
        assert {m.init for m in layers} == {"recast_authors"} and any(m.generated for m in layers)
    model.requires_grad_(False)
    for p in [*params.values(), *model.heads.parameters()]:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    step = TrainStep(model, method, 0, params, TrainerConfig())  # the engine's step: BN policy and every hook
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    for _ in range(2):
        step.run(opt, x, y)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in coeffs.values())
    assert sum(int(torch.count_nonzero(p.grad)) for p in own.values()) > 0
    frozen = [n for n, p in model.named_parameters() if p.grad is not None and n not in params]
    assert all(n.startswith("heads.") for n in frozen), frozen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_piggyback_packing_and_hat_grad_masks_stay_on_the_gpu() -> None:
    model = tiny_model().cuda()
    pb = make(Piggyback, PiggybackConfig(), model)
    state = pb.task_state(model)  # taken at every validation improvement: no host round trip of the mask
    assert all(v.is_cuda and v.dtype == torch.uint8 for v in state.values())
    pb.load_task_state(model, state)
    assert torch.equal(pb.task_state(model)[next(iter(state))], state[next(iter(state))])
    model = tiny_model()
    hat = make(Hat, HatConfig(), model)
    hat.on_task_start(model, 0, None, None)  # masks built before Lightning moves the model
    model.cuda().train()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32, device="cuda"), 0), torch.tensor([0, 1, 2, 0]).cuda()).backward()
    hat.on_after_backward(model)
    assert all(m.is_cuda for m in hat._grad_masks.values())  # moved once, reused every later step
