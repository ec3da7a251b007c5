"""L2P (Wang et al., CVPR 2022, "Learning to Prompt for Continual Learning") through avalanche's LearningToPrompt.

avalanche-lib 0.6's strategy cannot run here as shipped, and this wrapper fixes each problem without touching
avalanche or downgrading timm:

* ``avalanche.models.vit.create_model`` goes through ``_create_vision_transformer``, which indexes timm's
  ``PretrainedCfg`` like a dict and fails on timm >= 0.9 ("'PretrainedCfg' object is not subscriptable"); it
  would also download weights. We build avalanche's own ``ViTWithPrompt`` directly with the architecture of our
  backbone and copy our backbone's (local) weights into it, both for the prompted model and for the frozen
  query network (``original_vit``). The positions of the prompt tokens start from the class token's position
  embedding, as the official code's checkpoint filter does.
* Its classifier is hard-coded to ``Linear(768, num_classes)`` (ViT-B only); we replace it by
  ``Linear(embed_dim, num_classes)`` so ViT-S/L, DINO-S and the tiny test ViT (dim 48) work.
* It has one head over all classes (class-incremental). Training masks the other experiences' classes (avalanche's
  ``use_mask``); for task-IL evaluation we keep only the logits of the evaluated task's classes.
* It rebuilds its Adam every experience, so the engine's StepLR plugin is not attached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
from avalanche.models.timm_vit import ViTWithPrompt
from avalanche.training.supervised import LearningToPrompt
from avalanche.training.supervised import l2p as l2p_module
from torch import nn

from baselines.avalanche_strategies import Adapter
from recast_bench.errors import UserError

if TYPE_CHECKING:
    from baselines.avalanche_common import AvalancheLearner


def vit_arch(backbone: nn.Module) -> dict[str, Any]:
    """``ViTWithPrompt`` constructor arguments reproducing a timm ``VisionTransformer`` backbone."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or getattr(backbone, "cls_token", None) is None:
        raise UserError("l2p needs a timm ViT backbone with a class token")
    if getattr(backbone, "num_reg_tokens", 0) or not isinstance(blocks[0].ls1, nn.Identity):
        raise UserError("l2p does not support ViTs with register tokens or layer scale")
    b0 = blocks[0]
    return {
        "img_size": tuple(backbone.patch_embed.img_size),
        "patch_size": tuple(backbone.patch_embed.patch_size),
        "embed_dim": int(backbone.embed_dim),
        "depth": len(blocks),
        "num_heads": int(b0.attn.num_heads),
        "mlp_ratio": b0.mlp.fc1.out_features / backbone.embed_dim,
        "qkv_bias": b0.attn.qkv.bias is not None,
        "no_embed_class": bool(getattr(backbone, "no_embed_class", False)),
    }


def load_backbone_weights(net: ViTWithPrompt, backbone: nn.Module) -> None:
    """Copy ``backbone``'s weights into ``net``; prompt-token positions start as the class token's."""
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    pos = sd["pos_embed"]
    extra = net.pos_embed.shape[1] - pos.shape[1]
    if extra > 0:  # layout: [cls, prompts..., patches...]
        sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1].expand(-1, extra, -1), pos[:, 1:]], dim=1)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.startswith(("prompt.", "head."))]
    if left or unexpected:
        raise UserError(
            f"backbone does not fit avalanche's ViTWithPrompt: missing {left[:3]}, unexpected {unexpected[:3]}"
        )


def local_create_model(backbone: nn.Module):  # noqa: ANN201
    """A drop-in for ``avalanche.models.vit.create_model`` building on our backbone: no timm cfg, no download."""
    arch = vit_arch(backbone)

    def create_model(model_name: str = "", **kw: Any) -> ViTWithPrompt:
        prompted = bool(kw.get("prompt_pool", False))
        net = ViTWithPrompt(
            **arch,
            num_classes=kw.get("num_classes", 0),
            drop_rate=kw.get("drop_rate", 0.0),
            drop_path_rate=kw.get("drop_path_rate", 0.0),
            prompt_length=kw.get("prompt_length") if prompted else None,
            embedding_key=kw.get("embedding_key", "cls"),
            prompt_init=kw.get("prompt_init", "uniform"),
            prompt_pool=prompted,
            prompt_key=kw.get("prompt_key", False),
            pool_size=kw.get("pool_size") if prompted else None,
            top_k=kw.get("top_k") if prompted else None,
            batchwise_prompt=kw.get("batchwise_prompt", False),
            head_type=kw.get("head_type", "token"),
            use_prompt_mask=kw.get("use_prompt_mask", False),
        )
        load_backbone_weights(net, backbone)
        return net

    return create_model


class L2PAdapter(Adapter):
    """avalanche's LearningToPrompt on our local ViT (see module docstring)."""

    def build(self, ln: AvalancheLearner) -> Any:
        c = ln.cfg
        kw = ln.strategy_kwargs()
        with mock.patch.object(l2p_module, "create_model", local_create_model(ln.backbone)):
            s = LearningToPrompt(
                model_name="local", criterion=nn.CrossEntropyLoss(), pretrained=True, num_classes=ln.total_classes,
                pool_size=c.pool_size, prompt_length=c.prompt_length, top_k=c.top_k, lr=c.lr,
                sim_coefficient=c.sim_coefficient, batchwise_prompt=c.batchwise_prompt, **kw,
            )  # fmt: skip
        s.model.head = nn.Linear(s.model.embed_dim, ln.total_classes).to(ln.device)  # was Linear(768, ...)
        return s

    def trainable_params(self, strategy: Any) -> int:
        return sum(p.numel() for n, p in strategy.model.named_parameters() if p.requires_grad and "head." not in n)

    def head_in_features(self, strategy: Any) -> int:
        return int(strategy.model.head.in_features)

    def head_weights(self, strategy: Any, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return strategy.model.head.weight, strategy.model.head.bias

    def eval_modules(self, strategy: Any) -> list[nn.Module]:
        return [strategy.model, strategy.original_vit]

    def logits(self, strategy: Any, x: torch.Tensor, t: int) -> torch.Tensor:
        # Same call as LearningToPrompt.forward at evaluation; the task's columns are selected by the caller.
        cls_features = strategy.original_vit(x)["pre_logits"]
        return strategy.model(x=x, task_id=t, cls_features=cls_features, train=False)["logits"]
