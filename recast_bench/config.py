"""Run configuration: dataclasses hold every default, Hydra yaml in ``conf/`` only overrides them.

``compose_config`` builds the Hydra config from ``conf/`` plus CLI overrides, then validates each group against
its dataclass (unknown keys, wrong types and bad values become a one-line :class:`UserError`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recast_bench.errors import UserError


def _conf_dir() -> Path:
    """The config groups: ``$RECAST_BENCH_CONF``, else the package's ``conf`` (``recast_bench/conf`` is a link to the
    checkout's top-level ``conf/``, so a wheel carries the files), else the checkout's ``conf/`` (a checkout whose
    git made the link a plain file, as on Windows without symlinks)."""
    if os.environ.get("RECAST_BENCH_CONF"):
        return Path(os.environ["RECAST_BENCH_CONF"])
    packaged = Path(str(resources.files("recast_bench") / "conf"))
    return packaged.resolve() if packaged.is_dir() else Path(__file__).resolve().parents[1] / "conf"


CONF_DIR = _conf_dir()


@dataclass
class BackboneConfig:
    name: str = "vit_tiny"
    weights: str | None = None
    """Local weight file (timm .safetensors/.pth, torchvision .pth). ``None``: ``<weights_dir>/<name>.*``."""
    allow_random_init: bool = False
    """Use random weights when no file is found. Only sensible for tiny test backbones and for ``mimic``."""
    image_size: int | None = None
    """Input resolution; ``None`` uses the backbone's native size (224, tiny: 32)."""

    def __post_init__(self) -> None:
        if not str(self.name or ""):
            raise UserError("backbone.name is empty")
        if self.image_size is not None:
            _at_least("backbone.image_size", self.image_size, 8)


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

    def __post_init__(self) -> None:
        _one_of("stream.split", self.split, ("official", "pooled"))
        _one_of("stream.normalization", self.normalization, ("imagenet", "dataset"))
        if not isinstance(self.val_fraction, int | float) or not 0 < self.val_fraction < 1:
            raise UserError(f"stream.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        fr = list(self.pooled_fractions)
        if len(fr) != 3 or any(not isinstance(f, int | float) or f <= 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise UserError(f"stream.pooled_fractions must be 3 positive fractions adding up to 1, got {fr}")
        for name in ("max_train_per_task", "max_eval_per_task"):
            if getattr(self, name) is not None:
                _at_least(f"stream.{name}", getattr(self, name), 1)
        _at_least("stream.num_tasks", self.num_tasks, 1)
        for name in ("train_per_class", "val_per_class", "test_per_class"):  # 0: the stream names the empty split
            _at_least(f"stream.{name}", getattr(self, name), 0)
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 2 for c in self.classes_per_task):
            raise UserError(f"stream.classes_per_task must be integers >= 2, got {list(self.classes_per_task)}")
        if not isinstance(self.noise, int | float) or self.noise < 0:
            raise UserError(f"stream.noise must be >= 0, got {self.noise!r}")


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

    def __post_init__(self) -> None:
        """Every trainer value checked once, before anything runs (a nonsense value is one line, exit 2)."""
        for name in ("epochs", "lr_step_epochs", "batch_size", "eval_batch_size", "num_nodes",
                     "check_val_every_n_epoch"):  # fmt: skip
            _at_least(f"trainer.{name}", getattr(self, name), 1)
        if self.num_workers is not None:
            _at_least("trainer.num_workers", self.num_workers, 0)
        _positive("trainer.lr_gamma", self.lr_gamma)
        if self.grad_clip is not None:
            _positive("trainer.grad_clip", self.grad_clip)
        _one_of("trainer.profile", str(self.profile).lower(), PROFILES)
        if self.resolved_profile is not None:
            _one_of("trainer.resolved_profile", self.resolved_profile, PROFILES[1:])
        _one_of("trainer.accelerator", str(self.accelerator).lower(), ACCELERATORS)
        if str(self.strategy) not in STRATEGIES:
            raise UserError(f"trainer.strategy must be auto or a Lightning strategy (ddp, ddp_spawn, fsdp, ...); "
                            f"got {self.strategy!r}")  # fmt: skip
        if self.precision is not None:
            _one_of("trainer.precision", str(self.precision), PRECISIONS)
        if self.matmul_precision is not None:
            _one_of("trainer.matmul_precision", self.matmul_precision, ("highest", "high", "medium"))
        _one_of("trainer.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        check_devices(self.devices)
        if self.deterministic is not None and parse_deterministic(self.deterministic) is True and self.cudnn_benchmark:
            raise UserError(
                "trainer.cudnn_benchmark=true contradicts trainer.deterministic=true (benchmarking picks conv "
                "algorithms by timing, so runs differ); use trainer.deterministic=warn or drop trainer.cudnn_benchmark"
            )


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

    def __post_init__(self) -> None:
        if self.backend not in ("csv", "wandb", "none"):
            raise UserError(f"unknown logger.backend {self.backend!r}; valid: csv, wandb, none")
        _one_of("logger.mode", self.mode, ("offline", "online", "disabled", "shared"))


@dataclass
class PathsConfig:
    data_dir: str = "data"
    weights_dir: str = "${paths.data_dir}/weights"
    cache_dir: str = "${paths.data_dir}/cache"

    def __post_init__(self) -> None:
        for name in ("data_dir", "weights_dir", "cache_dir"):
            if not str(getattr(self, name) or ""):
                raise UserError(f"paths.{name} is empty")


PROFILES = ("auto", "cpu", "gpu")
"""``trainer.profile``: ``auto`` resolves to ``cpu`` or ``gpu`` (engine/device.py)."""
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
"""Lightning's accelerator names (its AcceleratorRegistry plus ``auto`` and ``gpu``; tests/test_config_logging.py)."""
STRATEGIES = (
    "auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "ddp_fork",
    "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "ddp_notebook",
    "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true", "ddp_spawn",
    "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true", "deepspeed",
    "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device",
    "single_tpu", "single_xla", "xla", "xla_debug",
)  # fmt: skip
"""Lightning 2.6's StrategyRegistry plus ``auto`` (listed here so that checking a config imports no Lightning)."""
PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true",
    "64-true", "64", "32", "16", "bf16",
)  # fmt: skip
"""Lightning's precision inputs (``lightning.fabric.connector._PRECISION_INPUT_STR`` and its aliases)."""
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be >= {low} (an integer), got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UserError(f"{name} must be > 0, got {value!r}")


def _one_of(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise UserError(f"{name} must be one of {', '.join(options)}; got {value!r}")


def parse_deterministic(value: Any) -> bool | str:
    """``trainer.deterministic`` as Lightning takes it: True, False or ``"warn"``."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    if text == "warn":
        return "warn"
    raise UserError(f"trainer.deterministic must be true, false or warn, got {value!r}")


def check_devices(devices: Any) -> None:
    """``trainer.devices`` as Lightning takes it: a count >= 1, -1 (all), ``auto``, a list of indices or "0,1"."""
    if isinstance(devices, bool):
        ok = False
    elif isinstance(devices, int):
        ok = devices >= 1 or devices == -1
    elif isinstance(devices, list | tuple) or OmegaConf.is_list(devices):
        ok = len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    else:
        text = str(devices).strip()
        ok = text in ("auto", "-1") or (text.strip(",") != "" and all(p.strip().isdigit() for p in text.split(",")))
    if not ok:
        raise UserError(f"trainer.devices must be a count >= 1, -1, auto, a list of indices or '0,1'; got {devices}")


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


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split command-line overrides into Hydra's (group choices, ``+``/``++``/``~``, ``hydra.*``) and plain values.

    A ``key=value`` override of a value (``trainer.epochs=5``) is parsed with Hydra's own override grammar, so its
    syntax (lists, quotes, ``null``) is Hydra's, and returned as a value to set on the composed config: the group
    yaml files hold only the keys they change, so most keys exist only in the dataclasses, and Hydra would refuse to
    set them. Every group is validated against its dataclass right after (unknown keys, types, values).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    parser = OverridesParser.create()
    hydra_overrides: list[str] = []
    values: dict[str, Any] = {}
    for text in overrides:
        try:
            ov = parser.parse_override(text)
        except Exception as e:  # Hydra's grammar errors come in several types
            raise UserError(f"bad override {text!r}: {str(e).splitlines()[0]}") from None
        if ov.is_sweep_override():
            raise UserError(f"override {text!r} is a sweep; run sweeps with python -m recast_bench.sweep -m")
        key = ov.key_or_group
        if ov.type != OverrideType.CHANGE or ov.package is not None or key in groups or key.startswith("hydra."):
            hydra_overrides.append(text)
        else:
            values.pop(key, None)  # the last one given wins, and in the order given
            values[key] = ov.value()
    return hydra_overrides, values


def set_values(cfg: DictConfig, values: dict[str, Any]) -> None:
    """Set dotted keys on a composed config; a string is taken as it is (a path may hold ``=``, ``,``, spaces)."""
    for key, value in values.items():
        parent, _, _ = key.rpartition(".")
        if parent and OmegaConf.select(cfg, parent, throw_on_missing=False) is None:
            OmegaConf.update(cfg, parent, {}, force_add=True)  # e.g. ``linear: {}`` composes to None
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)


def compose_config(
    overrides: list[str] | None = None, config_name: str = "config", values: dict[str, Any] | None = None
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, set ``values``, and validate every group.

    ``values`` are dotted keys set on the composed config (beneath the ``key=value`` overrides) and never parsed as
    overrides: give every path from a command-line option here (``{"out": args.out}``), so any legal file name works.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not CONF_DIR.is_dir():
        raise UserError(f"config directory {CONF_DIR} not found (set RECAST_BENCH_CONF)")
    hydra_overrides, parsed = split_overrides(list(overrides or []))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=hydra_overrides)
    except Exception as e:
        raise UserError(f"bad override: {str(e).splitlines()[0]}") from None
    OmegaConf.set_struct(cfg, False)
    for key, value in (values or {}).items():
        if isinstance(value, str) and "${" in value:  # OmegaConf would read it as an interpolation, at every access
            raise UserError(f"{key} {value!r} contains '${{', which the config cannot hold literally; rename it")
    set_values(cfg, dict(values or {}))
    set_values(cfg, parsed)  # after the options' values: an override on the command line wins, as in Hydra
    return finish_config(cfg)


def finish_config(cfg: DictConfig) -> DictConfig:
    """Apply the protocol card and validate every group of a composed config (``recast-bench run`` and sweep jobs)."""
    OmegaConf.set_struct(cfg, False)
    from recast_bench.protocol.apply import apply_card

    apply_card(cfg)  # the paper row's values, beneath every yaml file and override (recast_bench/protocol/)
    for name, schema in GROUPS.items():
        cfg[name] = validate_group(name, cfg.get(name), schema)
    parts = method_schemas(cfg)
    for part, schema in parts.items():
        cfg.method[part] = validate_group(f"method.{part}", cfg.method.get(part), schema)
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:
        raise UserError(f"bad config interpolation: {str(e).splitlines()[0]}") from None
    for name in GROUPS:
        OmegaConf.to_object(cfg[name])  # runs each dataclass's __post_init__ on the resolved values
    for part in parts:
        try:
            OmegaConf.to_object(cfg.method[part])
        except ValueError as e:  # a method Config's __post_init__ (UserError is not a ValueError: it passes)
            raise UserError(f"bad method.{part} config: {e}") from None
    check_run_keys(cfg)
    return cfg


def method_schemas(cfg: DictConfig) -> dict[str, type]:
    """The Config dataclass of each registered part of ``method_name``: the recorded config then holds every value
    the method runs with (defaults included), and a bad one stops the run before anything is built."""
    from recast_bench.registry import METHODS, load_all

    load_all()
    parts = str(cfg.get("method_name") or "").split("+")
    if cfg.get("method") is None:
        cfg.method = {}
    return {p: METHODS.get(p).Config for p in parts if p in METHODS}


def check_run_keys(cfg: DictConfig) -> None:
    """The top-level keys of conf/config.yaml (no dataclass of their own)."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    if not str(cfg.get("out") or ""):
        raise UserError("out is empty: give --out DIR")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
