"""Run configuration: dataclasses hold every default, Hydra yaml in ``conf/`` only overrides them.

``compose_config`` builds the Hydra config from ``conf/`` plus CLI overrides, then validates each group against
its dataclass (unknown keys, wrong types and bad values become a one-line :class:`UserError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recast_bench.errors import UserError

CONF_DIR = Path(os.environ.get("RECAST_BENCH_CONF", Path(__file__).resolve().parents[1] / "conf"))


@dataclass
class BackboneConfig:
    name: str = "vit_tiny"
    weights: str | None = None
    """Local weight file (timm .safetensors/.pth, torchvision .pth). ``None``: ``<weights_dir>/<name>.*``."""
    allow_random_init: bool = False
    """Use random weights when no file is found. Only sensible for tiny test backbones and for ``mimic``."""
    image_size: int | None = None
    """Input resolution; ``None`` uses the backbone's native size (224, tiny: 32)."""


@dataclass
class StreamConfig:
    name: str = "synthetic"
    file: str | None = None
    """A stream file of your own tasks (YAML; recast_bench/data/streamfile.py). ``run --stream PATH.yaml`` sets it
    (and ``name`` to the file's); when set, it is built instead of the registered stream ``name``."""
    tasks: list[str] | None = None
    """Subset and order of tasks by name; ``None`` keeps the stream's default order."""
    root: str = "${paths.data_dir}"
    split: str = "official"
    """``official``: each dataset's train/test split, val held out of train. ``pooled``: seeded re-split of all."""
    val_fraction: float = 0.1
    """Fraction of the training split held out for model selection (official split)."""
    pooled_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    """train/val/test fractions for ``split=pooled`` (the paper's '75-15-15' does not add up; see README)."""
    max_train_per_task: int | None = None
    max_eval_per_task: int | None = None
    normalization: str = "imagenet"
    """``imagenet`` statistics, or ``dataset`` for per-dataset statistics."""
    cache: bool = True
    """Decode and resize each split once into a memory-mapped uint8 cache."""
    seed: int = 0
    """Seed of the splits and of the synthetic data (independent of the training seed)."""
    # synthetic stream only
    num_tasks: int = 4
    classes_per_task: list[int] = field(default_factory=lambda: [4, 6, 3, 5])
    train_per_class: int = 32
    val_per_class: int = 8
    test_per_class: int = 16
    noise: float = 0.6


@dataclass
class TrainerConfig:
    epochs: int = 100
    """Paper section 3: 100 epochs per task."""
    lr_step_epochs: int = 33
    """Paper: StepLR x0.1 every 33 epochs. Scaled to ``epochs`` when ``epochs`` < 100 (see ``scale_lr_steps``)."""
    lr_gamma: float = 0.1
    """Paper section 3: x0.1 per step."""
    scale_lr_steps: bool = True
    """Ours (flagged): shorter runs (demo, tests) keep the paper's 33/100 proportion; a no-op at 100 epochs."""
    batch_size: int = 64
    """Authors' ResNet notebook: 64. ViT rows get the authors' 128 from their protocol card."""
    eval_batch_size: int = 256
    """Does not change results (no BatchNorm updates in evaluation); sized for throughput."""
    profile: str = "auto"
    """Execution profile (``recast_bench/engine/device.py``): ``auto`` picks ``gpu`` when the run trains on CUDA,
    else ``cpu``. The fields below left at ``None`` come from the profile; a value set explicitly always wins."""
    num_workers: int | None = None
    """Loader workers. cpu profile: 0; gpu profile: CPUs per GPU (or per concurrent bench run), at most 8."""
    persistent_workers: bool | None = None
    """Keep loader workers alive across epochs (gpu profile: yes, when there are workers)."""
    pin_memory: bool | None = None
    """Page-locked loader batches for asynchronous host-to-GPU copies (gpu profile: yes)."""
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    """Lightning precision. cpu profile: ``32-true``; gpu profile: ``bf16-mixed`` (autocast, fp32 weights)."""
    deterministic: Any = None
    """``true``, ``false`` or ``warn``. cpu profile: true; gpu profile: warn (see engine/device.py)."""
    matmul_precision: str | None = None
    """``torch.set_float32_matmul_precision``: cpu profile ``highest``; gpu profile ``high`` (TF32)."""
    channels_last: bool | None = None
    """NHWC memory format for convolutional backbones (gpu profile: on for ResNets)."""
    compile: bool | None = None
    """``torch.compile`` the backbone's forward for training, validation and test evaluation (cpu profile: off; gpu
    profile: on). Compiled and eager training agree to float rounding (tests/test_compile.py); not fingerprinted, so
    a run may resume with it switched."""
    compile_backend: str = "inductor"
    """The torch.compile backend: ``inductor`` (fused generated kernels; needs triton on CUDA, a C++ compiler on the
    CPU), ``aot_eager`` (Dynamo capture and AOTAutograd with eager kernels: a debugging aid), ``eager``."""
    cudnn_benchmark: bool | None = None
    """cuDNN autotuning of convolution algorithms. ``None``: on unless ``deterministic=true`` (engine/device.py)."""
    resolved_profile: str | None = None
    """Filled in by the run: the profile that ``profile`` resolved to (recorded in results.json)."""
    progress_bar: bool | None = None
    """``None``: on when stderr is a terminal."""
    check_val_every_n_epoch: int = 1
    """Validation every epoch: model selection picks the best epoch on val."""
    grad_clip: float | None = None
    """Gradient-norm clip. None here; every Lightning row's protocol card sets the authors' 1.0 (classification
    notebooks), so a run with a card clips and a card-less run (``++protocol.card=none``) does not."""


@dataclass
class LoggerConfig:
    backend: str = "csv"
    """``csv``, ``wandb`` or ``none``."""
    project: str = "recast-bench"
    entity: str | None = None
    mode: str = "offline"
    """W&B mode; offline by default (sync later with ``wandb sync``)."""
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    data_dir: str = "data"
    weights_dir: str = "${paths.data_dir}/weights"
    cache_dir: str = "${paths.data_dir}/cache"


GROUPS: dict[str, type] = {
    "backbone": BackboneConfig,
    "stream": StreamConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
    "paths": PathsConfig,
}


def validate_group(name: str, cfg: Any, schema: type) -> Any:
    """Merge ``cfg`` over the dataclass defaults of ``schema``; unknown keys and bad types raise UserError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg if cfg is not None else {})
    except Exception as e:  # omegaconf raises several types; all are user mistakes here
        raise UserError(f"bad {name} config: {str(e).splitlines()[0]}") from None
    return merged


def _force_group_keys(overrides: list[str]) -> list[str]:
    """``trainer.epochs=5`` -> ``++trainer.epochs=5``.

    Group yaml files hold only overrides, so most keys exist only in the dataclasses; Hydra would refuse to set
    them. Forcing the key in is safe because every group is validated against its dataclass right after.
    """
    out = []
    for ov in overrides:
        head = ov.split("=", 1)[0]
        if "=" in ov and "." in head and head.split(".", 1)[0] in (*GROUPS, "method") and not ov.startswith(("+", "~")):
            ov = "++" + ov
        out.append(ov)
    return out


def compose_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides and validate every group."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not CONF_DIR.is_dir():
        raise UserError(f"config directory {CONF_DIR} not found (set RECAST_BENCH_CONF)")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=_force_group_keys(list(overrides or [])))
    except Exception as e:
        # show the override as the user typed it, not with the "++" that _force_group_keys added
        raise UserError(f"bad override: {str(e).splitlines()[0].replace(chr(39) + '++', chr(39))}") from None
    return finish_config(cfg)


def finish_config(cfg: DictConfig) -> DictConfig:
    """Apply the protocol card and validate every group of a composed config (``recast-bench run`` and sweep jobs)."""
    OmegaConf.set_struct(cfg, False)
    from recast_bench.protocol.apply import apply_card

    apply_card(cfg)  # the paper row's values, beneath every yaml file and override (recast_bench/protocol/)
    for name, schema in GROUPS.items():
        cfg[name] = validate_group(name, cfg.get(name), schema)
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise UserError(f"bad config interpolation: {str(e).splitlines()[0]}") from None
    return cfg


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
