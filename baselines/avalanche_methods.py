"""The Avalanche baselines (EWC, LwF, GDumb, DER++, ER-ACE, L2P): configs and registered method names.

DER++ is registered as ``derpp``: method names may not contain ``+`` (it composes ``recast+X``).

Paper (RECAST, Tables 1-2) compares against regularisation and rehearsal baselines run through avalanche-lib. Here
each one is a registered method whose ``runner`` is ``avalanche``: the task loop asks it for a learner
(``baselines/avalanche_common.py``) that runs avalanche-lib 0.6's own strategy experience by experience over our
task stream and backbone, and reports accuracy exactly as the engine does. Nothing here imports avalanche, so
``recast-bench list`` and every non-Avalanche run stay fast; the strategies are built in
``baselines/avalanche_strategies.py`` and ``baselines/avalanche_l2p.py`` when a run needs them.

Optimisation defaults (documented choice): SGD, lr 0.01, momentum 0.9, no weight decay, the optimizer state reset
at every experience (as the engine builds a fresh optimizer per task), batch size and epochs from ``trainer`` and the
engine's StepLR schedule. L2P keeps its own Adam (lr 0.03) that avalanche rebuilds every experience.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recast_bench.engine.method import Method, MethodConfig
from recast_bench.errors import UserError
from recast_bench.registry import METHODS

if TYPE_CHECKING:
    from recast_bench.config import TrainerConfig
    from recast_bench.data.stream import Task
    from recast_bench.engine.model import TaskModel


@dataclass
class AvalancheConfig(MethodConfig):
    """Shared by every Avalanche baseline; ``head_lr`` is ignored (avalanche uses one learning rate)."""

    lr: float = 0.01
    """SGD learning rate, the value avalanche-lib's examples use for its strategy wrappers."""
    optimizer: str = "sgd"
    """Ours (flagged on the table 1 card): avalanche's strategies take an optimizer and have no default; SGD with
    momentum 0.9, as avalanche-lib's examples."""
    momentum: float = 0.9
    """avalanche-lib's examples (see ``optimizer``)."""
    weight_decay: float = 0.0
    """avalanche-lib's examples (see ``optimizer``)."""
    eval_mb_size: int | None = None
    """Avalanche's evaluation batch size (DER, ER-ACE and L2P default to 1); ``None``: trainer.eval_batch_size."""
    lr_schedule: bool = True
    """Apply the engine's StepLR (x0.1 every ``trainer.lr_step_epochs``, scaled) through LRSchedulerPlugin."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_mb_size is not None and self.eval_mb_size < 1:
            raise ValueError(f"eval_mb_size must be >= 1 or null, got {self.eval_mb_size}")


@dataclass
class EWCConfig(AvalancheConfig):
    ewc_lambda: float = 0.4
    """Penalty weight; avalanche-lib's own tests and examples use 0.4 (the strategy has no default)."""
    mode: str = "separate"
    """avalanche's default: one penalty per earlier experience (``online`` keeps one decayed penalty)."""
    decay_factor: float | None = None
    """Only for ``mode=online``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ewc_lambda < 0:
            raise ValueError(f"ewc_lambda must be >= 0, got {self.ewc_lambda}")
        if self.mode not in ("separate", "online"):
            raise ValueError(f"mode must be separate or online, got {self.mode!r}")
        if (self.mode == "online") != (self.decay_factor is not None):
            raise ValueError("set decay_factor exactly when mode=online")


@dataclass
class LwFConfig(AvalancheConfig):
    alpha: float = 1.0
    """Distillation weight: avalanche LwFPlugin default."""
    temperature: float = 2.0
    """Softmax temperature: avalanche LwFPlugin default, the LwF paper's T=2."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.temperature <= 0:
            raise ValueError(f"need alpha >= 0 and temperature > 0, got {self.alpha}, {self.temperature}")


@dataclass
class GDumbConfig(AvalancheConfig):
    mem_size: int = 4400
    """Paper section 3: GDumb memory of 4400 samples, balanced over the classes seen so far."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mem_size < 1:
            raise ValueError(f"mem_size must be >= 1, got {self.mem_size}")


@dataclass
class ReplayConfig(AvalancheConfig):
    mem_per_class: int = 120
    """Paper section 3: 120 samples per class; memory = 120 x the stream's total classes, fixed per class."""
    batch_size_mem: int | None = None
    """Replay mini-batch size; ``None``: trainer.batch_size (mammoth's practice: same as the stream batch)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mem_per_class < 1:
            raise ValueError(f"mem_per_class must be >= 1, got {self.mem_per_class}")
        if self.batch_size_mem is not None and self.batch_size_mem < 1:
            raise ValueError(f"batch_size_mem must be >= 1 or null, got {self.batch_size_mem}")


@dataclass
class DERConfig(ReplayConfig):
    alpha: float = 0.1
    """Logit-matching (MSE) weight: avalanche DER default."""
    beta: float = 0.5
    """Replay cross-entropy weight: avalanche DER default; beta > 0 makes it DER++."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.beta <= 0:
            raise ValueError(
                f"derpp needs alpha >= 0 and beta > 0 (beta=0 is plain DER), got {self.alpha}, {self.beta}"
            )


@dataclass
class L2PConfig(AvalancheConfig):
    lr: float = 0.03
    """Adam learning rate: avalanche LearningToPrompt default (L2P paper: 0.03 with batch 128)."""
    optimizer: str = "adam"
    """avalanche LearningToPrompt: Adam (official)."""
    momentum: float = 0.0
    """Unused by Adam."""
    pool_size: int = 10
    """L2P paper: prompt pool M = 10."""
    prompt_length: int = 5
    """L2P paper: Lp = 5."""
    top_k: int = 5
    """L2P paper: N = 5 prompts selected per image."""
    sim_coefficient: float = 0.1
    """Weight of the key-query matching term: avalanche default, L2P paper's lambda = 0.1."""
    batchwise_prompt: bool = False
    """avalanche default (the official code enables it at test time only on some benchmarks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.pool_size, self.prompt_length, self.top_k) < 1 or self.top_k > self.pool_size:
            raise ValueError("need pool_size, prompt_length, top_k >= 1 and top_k <= pool_size")


AVALANCHE_PIN = "avalanche-lib==0.6.0"
AVALANCHE_NEEDS = ("avalanche", "wandb")
"""Top-level modules an Avalanche run imports: avalanche-lib itself, and wandb, which avalanche 0.6 imports
unconditionally (``avalanche/evaluation/metrics/confusion_matrix.py``)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package_error(method: str, module: str) -> UserError:
    """One line naming what to install for ``method`` when ``module`` cannot be imported."""
    if module == "avalanche":
        return UserError(f"{method} runs on avalanche-lib, which is not installed here: pip install {AVALANCHE_PIN}")
    return UserError(
        f"{method} runs on avalanche-lib, which cannot be imported without {module} (avalanche imports it itself): "
        f"pip install {module}"
    )


def require_avalanche(method: str) -> None:
    """Refuse an Avalanche run up front (before any output is written) when its packages are not installed; looks
    them up without importing them."""
    for module in AVALANCHE_NEEDS:
        if not _installed(module):
            raise missing_package_error(method, module)


class AvalancheMethod(Method[AvalancheConfig]):
    """Base of the Avalanche baselines: the whole network is shared and trained, the loop asks for a learner.

    Building one (``build_method``, before the run touches its output directory) checks that avalanche-lib can be
    imported; nothing imports it before :meth:`make_learner`.
    """

    runner = "avalanche"
    isolates_tasks = False
    Config = AvalancheConfig

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        require_avalanche(self.name)

    def make_learner(
        self, model: TaskModel, tasks: list[Task], tcfg: TrainerConfig, seed: int, fingerprint: str
    ) -> Any:
        try:  # avalanche is imported only for these runs
            from baselines.avalanche_common import AvalancheLearner
        except ImportError as e:
            module = (e.name or "").partition(".")[0]
            if not module or module in ("baselines", "recast_bench"):
                raise  # our own code: a bug, not a missing package
            raise missing_package_error(self.name, module) from None
        return AvalancheLearner(self, model, tasks, tcfg, seed, fingerprint)

    def selection(self) -> tuple[str, str]:
        # Avalanche trains a fixed number of epochs and keeps the last one: no validation-based selection.
        return ("none", "last")


@METHODS.register("ewc")
class EWCMethod(AvalancheMethod):
    """EWC (Kirkpatrick et al. 2017) via avalanche.training.supervised.EWC."""

    Config = EWCConfig


@METHODS.register("lwf")
class LwFMethod(AvalancheMethod):
    """LwF (Li & Hoiem 2017) via avalanche.training.supervised.LwF, all heads distilled."""

    Config = LwFConfig


@METHODS.register("gdumb")
class GDumbMethod(AvalancheMethod):
    """GDumb (Prabhu et al. 2020) via avalanche.training.supervised.GDumb: retrain from the start on the memory."""

    Config = GDumbConfig


@METHODS.register("derpp")
class DERppMethod(AvalancheMethod):
    """DER++ (Buzzega et al. 2020) via avalanche.training.supervised.DER with beta > 0."""

    Config = DERConfig


@METHODS.register("er-ace")
class ERACEMethod(AvalancheMethod):
    """ER-ACE (Caccia et al. 2022) via avalanche.training.supervised.ER_ACE."""

    Config = ReplayConfig


@METHODS.register("l2p")
class L2PMethod(AvalancheMethod):
    """L2P (Wang et al. 2022) via avalanche LearningToPrompt, built on our local ViT weights."""

    Config = L2PConfig
    families = ("vit",)
