"""Building each avalanche-lib 0.6 strategy over our network, and moving its continual state to and from files.

One adapter per method: ``build`` returns avalanche's own strategy (``EWC``, ``LwF``, ``GDumb``, ``DER``,
``ER_ACE``; L2P lives in ``avalanche_l2p.py``) with our settings; ``state``/``load_state`` write and restore
what the strategy carries between experiences (EWC importances and anchors, LwF's teacher bookkeeping, GDumb's
initial model, replay buffers) as tensors plus JSON, so an interrupted run continues after its last experience.

Fixes to avalanche behaviour live here, each as the smallest override of avalanche's own class:

* DER's ``compute_dataset_logits`` calls ``model(x)`` without task labels, which a multi-head model cannot
  answer; :class:`TaskAwareDER` swaps in a version that goes through ``avalanche_forward`` with the labels.
* DER and ER-ACE size their buffers adaptively over the classes seen so far; the paper keeps 120 samples per
  class, so their storage policy is replaced by a fixed per-class one over the stream's total classes.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any
from unittest import mock

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EWCPlugin, GDumbPlugin, LwFPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer, ReservoirSamplingBuffer
from avalanche.training.supervised import DER, ER_ACE, EWC, GDumb, LwF
from avalanche.training.supervised import der as der_module
from avalanche.training.utils import ParamData, cycle
from torch import nn

from baselines.avalanche_ewc import FlatEWCPlugin

if TYPE_CHECKING:
    from baselines.avalanche_common import AvalancheLearner


# ---- replay buffers ----------------------------------------------------------------------------------------------
def buffer_state(policy: Any, prefix: str, with_logits: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """A class-balanced buffer as tensors (sample uids, reservoir weights, DER logits) and JSON (sizes, classes)."""
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for c, g in policy.buffer_groups.items():
        groups[str(int(c))] = int(g.max_size)
        if len(g.buffer) == 0:
            continue
        tensors[f"{prefix}/{int(c)}/uid"] = torch.as_tensor([int(u) for u in g.buffer.uid], dtype=torch.int64)
        tensors[f"{prefix}/{int(c)}/w"] = g._buffer_weights.detach().clone()
        if with_logits:
            tensors[f"{prefix}/{int(c)}/logits"] = torch.stack([torch.as_tensor(v) for v in g.buffer.logits])
    meta = {"groups": groups, "seen": sorted(int(c) for c in getattr(policy, "seen_classes", set()))}
    return tensors, meta


def restore_buffer(policy: Any, tensors: dict, meta: dict, prefix: str, learner: AvalancheLearner, with_logits=False):
    """Rebuild ``policy.buffer_groups`` from :func:`buffer_state` over the learner's experiences."""
    from avalanche.benchmarks.utils import make_avalanche_dataset
    from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
    from avalanche.benchmarks.utils.flat_data import FlatData

    policy.buffer_groups = {}
    policy.seen_classes = set(meta["seen"])
    for c, size in meta["groups"].items():
        group = ReservoirSamplingBuffer(size)
        key = f"{prefix}/{c}"
        if f"{key}/uid" in tensors:
            ds = learner.subset_by_uid(tensors[f"{key}/uid"].tolist())
            if with_logits:
                logits = FlatData([list(tensors[f"{key}/logits"].unbind(0))], discard_elements_not_in_indices=True)
                ds = make_avalanche_dataset(
                    ds, data_attributes=[TensorDataAttribute(logits, name="logits", use_in_getitem=True)]
                )
            group.buffer = ds
            group._buffer_weights = tensors[f"{key}/w"].clone()
        policy.buffer_groups[int(c)] = group


@torch.no_grad()
def task_aware_logits(dataset: Any, model: nn.Module, batch_size: int, device: Any, num_workers: int = 0) -> list:
    """DER's logits of ``dataset`` as avalanche computes them, but passing each sample's task label."""
    was_training = model.training
    model.eval()
    out = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        x, t = batch[0].to(device), batch[2].to(device)
        out.extend(avalanche_forward(model, x, t).detach().cpu().unbind(0))
    model.train(was_training)
    return [o.clone() for o in out]


class TaskAwareDER(DER):
    """avalanche's DER whose buffer logits come from the task's own head (see module docstring)."""

    def _after_training_exp(self, **kwargs: Any) -> None:
        with mock.patch.object(der_module, "compute_dataset_logits", task_aware_logits):
            super()._after_training_exp(**kwargs)


class WorkerER_ACE(ER_ACE):  # noqa: N801 (avalanche's class name)
    """avalanche's ER-ACE whose replay loader uses the run's loader workers (avalanche builds it with none, so every
    replay batch would be read and transformed in the training process)."""

    def _before_training_exp(self, **kwargs: Any) -> None:
        super()._before_training_exp(**kwargs)
        workers = int(kwargs.get("num_workers", 0) or 0)
        if self.replay_loader is not None and workers > 0:
            self.replay_loader = cycle(
                torch.utils.data.DataLoader(
                    self.storage_policy.buffer,
                    batch_size=self.batch_size_mem,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                    pin_memory=bool(kwargs.get("pin_memory")),
                    persistent_workers=bool(kwargs.get("persistent_workers")),
                )  # fmt: skip
            )


class Adapter:
    """Full-network baseline on :class:`~baselines.avalanche_common.MultiHeadNet`; subclasses build the strategy."""

    def build(self, ln: AvalancheLearner) -> Any:
        raise NotImplementedError

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        """Restore :meth:`state`; the network itself is already loaded."""

    def trainable_params(self, strategy: Any) -> int:
        return sum(p.numel() for p in strategy.model.backbone.parameters() if p.requires_grad)

    def head_in_features(self, strategy: Any) -> int:
        return int(strategy.model.classifier.in_features)

    def head_weights(self, strategy: Any, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        lin = strategy.model.classifier.classifiers[str(t)].classifier
        return lin.weight, lin.bias

    def eval_modules(self, strategy: Any) -> list[nn.Module]:
        return [strategy.model]  # GDumb swaps strategy.model every experience: always look it up

    def logits(self, strategy: Any, x: torch.Tensor, t: int) -> torch.Tensor:
        return strategy.model(x, t)

    @staticmethod
    def plugin(strategy: Any, cls: type) -> Any:
        return next(p for p in strategy.plugins if isinstance(p, cls))


def _common(ln: AvalancheLearner) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    net = ln.multihead_net()
    opt = ln.make_optimizer(net.parameters())
    kwargs = ln.strategy_kwargs()
    kwargs["plugins"] = ln.plugins(opt)
    return net, opt, kwargs


def _param_dicts(prefix: str, d: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{e}/{k}": p.data.detach().clone() for e, params in d.items() for k, p in params.items()}


def _load_param_dicts(prefix: str, tensors: dict, device: Any) -> dict[int, dict[str, ParamData]]:
    out: dict[int, dict[str, ParamData]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "/"):
            e, name = key[len(prefix) + 1 :].split("/", 1)
            out.setdefault(int(e), {})[name] = ParamData(name, init_tensor=v.to(device), device=device)
    return out


class EWCAdapter(Adapter):
    def build(self, ln: AvalancheLearner) -> Any:
        net, opt, kw = _common(ln)
        c = ln.cfg
        strategy = EWC(
            model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), ewc_lambda=c.ewc_lambda, mode=c.mode,
            decay_factor=c.decay_factor, **kw,
        )  # fmt: skip
        # avalanche's penalty loop issues 1,210 small ops per earlier experience per step on ResNet-34; the flat
        # plugin computes the same sum in a few (baselines/avalanche_ewc.py)
        strategy.plugins = [FlatEWCPlugin.replacing(p) if type(p) is EWCPlugin else p for p in strategy.plugins]
        return strategy

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        p = self.plugin(ln.strategy, EWCPlugin)
        return {**_param_dicts("ewc/params", p.saved_params), **_param_dicts("ewc/imp", p.importances)}, {}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        from collections import defaultdict

        p = self.plugin(ln.strategy, EWCPlugin)
        p.saved_params = defaultdict(dict, _load_param_dicts("ewc/params", tensors, ln.device))
        p.importances = defaultdict(dict, _load_param_dicts("ewc/imp", tensors, ln.device))


class LwFAdapter(Adapter):
    def build(self, ln: AvalancheLearner) -> Any:
        net, opt, kw = _common(ln)
        return LwF(
            model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), alpha=ln.cfg.alpha,
            temperature=ln.cfg.temperature, **kw,
        )  # fmt: skip

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        # The teacher is a copy of the network right after the last experience, i.e. the network being saved.
        lwf = self.plugin(ln.strategy, LwFPlugin).lwf
        prev = {str(int(k)): sorted(int(c) for c in v) for k, v in lwf.prev_classes_by_task.items()}
        return {}, {"lwf": {"expcount": lwf.expcount, "prev_classes_by_task": prev}}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        from collections import defaultdict

        lwf = self.plugin(ln.strategy, LwFPlugin).lwf
        lwf.expcount = int(info["lwf"]["expcount"])
        lwf.prev_classes_by_task = defaultdict(
            set, {int(k): set(v) for k, v in info["lwf"]["prev_classes_by_task"].items()}
        )
        lwf.prev_model = copy.deepcopy(ln.strategy.model) if ln.done else None


class GDumbAdapter(Adapter):
    def build(self, ln: AvalancheLearner) -> Any:
        net, opt, kw = _common(ln)
        return GDumb(model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), mem_size=ln.cfg.mem_size, **kw)

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        p = self.plugin(ln.strategy, GDumbPlugin)
        tensors, meta = buffer_state(p.storage_policy, "buffer")
        # GDumb retrains every experience from this initial network (pretrained backbone, untrained heads).
        tensors.update({f"init/{k}": v.detach().clone() for k, v in p.init_model.state_dict().items()})
        return tensors, {"buffer": meta}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        p = self.plugin(ln.strategy, GDumbPlugin)
        restore_buffer(p.storage_policy, tensors, info["buffer"], "buffer", ln)
        init = copy.deepcopy(ln.strategy.model)  # same heads and masks; its own copy of the backbone
        init.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("init/")}, strict=True)
        p.init_model = init.to(ln.device)


class DERAdapter(Adapter):
    def build(self, ln: AvalancheLearner) -> Any:
        net, opt, kw = _common(ln)
        c = ln.cfg
        mem = c.mem_per_class * ln.total_classes
        s = TaskAwareDER(
            model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), mem_size=mem,
            batch_size_mem=c.batch_size_mem or ln.tcfg.batch_size, alpha=c.alpha, beta=c.beta, **kw,
        )  # fmt: skip
        s.storage_policy = der_module.ClassBalancedBufferWithLogits(
            mem, adaptive_size=False, total_num_classes=ln.total_classes
        )
        return s

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = buffer_state(ln.strategy.storage_policy, "buffer", with_logits=True)
        return tensors, {"buffer": meta}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        restore_buffer(ln.strategy.storage_policy, tensors, info["buffer"], "buffer", ln, with_logits=True)


class ERACEAdapter(Adapter):
    def build(self, ln: AvalancheLearner) -> Any:
        net, opt, kw = _common(ln)
        c = ln.cfg
        mem = c.mem_per_class * ln.total_classes
        s = WorkerER_ACE(
            model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(), mem_size=mem,
            batch_size_mem=c.batch_size_mem or ln.tcfg.batch_size, **kw,
        )  # fmt: skip
        s.storage_policy = ClassBalancedBuffer(mem, adaptive_size=False, total_num_classes=ln.total_classes)
        return s

    def state(self, ln: AvalancheLearner) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, meta = buffer_state(ln.strategy.storage_policy, "buffer")
        return tensors, {"buffer": meta}

    def load_state(self, ln: AvalancheLearner, tensors: dict[str, torch.Tensor], info: dict) -> None:
        restore_buffer(ln.strategy.storage_policy, tensors, info["buffer"], "buffer", ln)


def adapter_for(name: str) -> Adapter:
    """The adapter of registered method ``name`` (L2P's is imported only when asked for)."""
    if name == "l2p":
        from baselines.avalanche_l2p import L2PAdapter

        return L2PAdapter()
    table: dict[str, type[Adapter]] = {
        "ewc": EWCAdapter, "lwf": LwFAdapter, "gdumb": GDumbAdapter, "derpp": DERAdapter, "er-ace": ERACEAdapter,
    }  # fmt: skip
    return table[name]()
