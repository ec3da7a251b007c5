"""CLR, Channel-wise Lightweight Reprogramming (Ge et al., ICCV 2023): a depthwise 3x3 conv after each frozen conv.

Every target convolution ``conv`` becomes ``reprogram(conv(x))`` where ``reprogram`` is a depthwise 3x3 convolution
(one 3x3 kernel per output channel, stride 1, padding 1, no bias) initialised to the identity (``dirac``), placed
before the conv's BatchNorm. Per task, the reprogramming kernels and the BatchNorm layers train (the official code
puts BN in ``train()`` mode, so BN running statistics are per-task state too) and the pretrained convs stay frozen.
Every task restarts from the identity kernels and the pretrained BN.

Official code followed: gyhandy/Channel-wise-Lightweight-Reprogramming (``network/ReGhos_Block.py``: the block;
``main.py`` / ``utils.py``: Adam lr 1e-3, step decay at a third of the epochs, and an L2-*norm* penalty
``lambda * ||w||_2`` with lambda 1e-5 on every tensor of ``model.reg_params``: the classifier ``fc``, the BN layers
and the reprogramming kernels, zero tensors skipped). The official default model, ``--method Ghost_reduced_v1``,
skips the 1x1 convs (``skip_1x1: true``, our default). Count on ResNet-34 (head excluded): 7,616 reprogrammed
channels (stem + block convs) -> 68,544 kernel weights, plus 17,024 per-task BN affine parameters = 85,568 = 3.9e-3 P,
Table 1's "4e-3 P" (both parts are reported, see :meth:`Clr.count_breakdown`). ``skip_1x1: false`` also reprograms
the three 1x1 downsample convs: 76,608 + 17,024 = 93,632 (4.3e-3 P). For ``recast+clr`` the reprogramming conv
follows the generated-weight conv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines._resnet import bn_buffers, bn_parameters, resnet_convs, restore, set_submodule, snapshot
from recast_bench.engine.method import Method, MethodConfig
from recast_bench.engine.model import head_key
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


@dataclass
class ClrConfig(MethodConfig):
    """CLR settings; defaults from the official ``main.py`` and ``utils.py``."""

    lr: float = 1e-3
    """main.py: ``lr = 1e-3``."""
    optimizer: str = "adam"
    """main.py: ``optim.Adam``."""
    weight_decay: float = 0.0
    """The official code has no weight decay; its penalty is ``reg_lambda`` below."""
    reg_lambda: float = 1e-5
    """main.py ``lamda = 1e-5``: ``loss += lambda * ||w||_2`` for every tensor of ``reg_params`` (utils.train,
    reg="l2"): reprogramming kernels, BN and the task's classifier."""
    kernel_size: int = 3
    """ReGhos_Block default ``kernel_size=3``."""
    skip_1x1: bool = True
    """Official default ``Ghost_reduced_v1``: no reprogramming after 1x1 convs (ResNet-34's downsample projections);
    its count (85,568 with BN) is Table 1's 4e-3 P. false: every conv (93,632)."""
    train_bn: bool = True
    """Official: BN layers train per task (``train_BN``); false keeps BN frozen."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"clr kernel_size must be a positive odd number (output size unchanged), got {self.kernel_size}"
            )
        if self.reg_lambda < 0:
            raise ValueError(f"clr reg_lambda must be >= 0, got {self.reg_lambda}")


class ClrLayer(nn.Module):
    """``reprogram(base(x))``: a frozen conv (plain or RECAST-generated) followed by a depthwise identity-init conv."""

    def __init__(self, base: nn.Module, kernel_size: int = 3) -> None:
        super().__init__()
        self.base = base
        channels = int(base.out_channels)
        self.kernel_size = int(kernel_size)
        self.reprogram = nn.Parameter(torch.empty(channels, 1, self.kernel_size, self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.dirac_(self.reprogram, groups=self.reprogram.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Calling base(x) keeps whatever weight the base produces now (a RECAST layer generates it per call).
        y = self.base(x)
        return F.conv2d(y, self.reprogram, None, 1, self.kernel_size // 2, 1, self.reprogram.shape[0])

    def extra_repr(self) -> str:
        return f"channels={self.reprogram.shape[0]}, kernel_size={self.kernel_size}"


@METHODS.register("clr")
class Clr(Method[ClrConfig]):
    """Frozen convs, per-task depthwise reprogramming kernels and BatchNorm (see module docstring)."""

    Config: ClassVar[type[MethodConfig]] = ClrConfig
    families: ClassVar[tuple[str, ...]] = ("resnet",)
    composable: ClassVar[bool] = True
    isolates_tasks: ClassVar[bool] = True

    def setup(self, model: TaskModel) -> None:
        cfg = self.cfg
        try:
            targets = resnet_convs(model.backbone, skip_1x1=cfg.skip_1x1)
        except ValueError as e:
            raise UserError(f"clr on {self.ctx.backbone_name or 'this backbone'}: {e}") from None
        for name, conv in targets.items():
            layer = ClrLayer(conv, cfg.kernel_size).to(next(model.backbone.parameters()).device)
            set_submodule(model.backbone, name, layer)
        # Every task restarts from the pretrained BN (affine and running statistics).
        self._bn_init = snapshot({**bn_parameters(model), **bn_buffers(model)})

    def layers(self, model: TaskModel) -> dict[str, ClrLayer]:
        return {n: m for n, m in model.named_modules() if isinstance(m, ClrLayer)}

    def reprogram_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        return {f"{n}.reprogram": m.reprogram for n, m in self.layers(model).items()}

    def task_parameters(self, model: TaskModel) -> dict[str, nn.Parameter]:
        params = self.reprogram_parameters(model)
        if self.cfg.train_bn:
            params.update(bn_parameters(model))
        return params

    def task_buffers(self, model: TaskModel) -> dict[str, torch.Tensor]:
        return bn_buffers(model) if self.cfg.train_bn else {}

    def count_breakdown(self, model: TaskModel) -> dict[str, int]:
        """Per-task learnt numbers: reprogramming kernels and BN affine parameters, separately."""
        reprogram = sum(p.numel() for p in self.reprogram_parameters(model).values())
        bn = sum(p.numel() for p in bn_parameters(model).values()) if self.cfg.train_bn else 0
        return {"reprogram": int(reprogram), "bn": int(bn)}

    def on_task_start(self, model: TaskModel, task_index: int, task: Task, train_loader: DataLoader) -> None:
        for m in self.layers(model).values():
            m.reset_parameters()
        restore({**bn_parameters(model), **bn_buffers(model)}, self._bn_init)

    def training_loss(
        self, model: TaskModel, task_index: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        lam = self.cfg.reg_lambda
        if lam == 0:
            return loss
        # The official penalty: the (unsquared) L2 norm of each tensor of reg_params (kernels, BN and the classifier,
        # utils.train); a zero tensor adds nothing. The classifier is the running task's head.
        params = [p for p in self.task_parameters(model).values() if p.requires_grad]
        key = head_key(task_index)
        if key in model.heads:
            params += [p for p in model.heads[key].parameters() if p.requires_grad]
        norms = [p.norm() for p in params]
        return loss + lam * torch.stack(norms).sum() if norms else loss

    def describe(self) -> dict:
        return {"name": self.name, "skip_1x1": self.cfg.skip_1x1, "train_bn": self.cfg.train_bn}
