"""Structured config schemas, registered with Hydra's ConfigStore.

The YAML files under ``configs/`` pick values; these dataclasses say which keys exist and
what type each has, so a misspelled key or a wrong type stops the run before any work.
Every default lives here once; the YAML group files only hold what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .errors import CnnbenchError


class DeviceName(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class CropMode(Enum):
    random = "random"  # RandomCrop: uniform position (after crop_padding)
    center = "center"  # CenterCrop in training too (seed 001)
    resized = "resized"  # RandomResizedCrop: random area (scale) and aspect (ratio), resized


class Normalize(Enum):
    auto = "auto"  # per-channel mean/std computed on the training split
    imagenet = "imagenet"
    none = "none"


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int | None = None  # None: from the dataset
    in_channels: int | None = None  # None: from the dataset
    weights: str | None = None  # local state_dict to load (no downloads at run time)
    freeze_features: bool = False


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"  # torchvision datasets: their parent folder; folder: the image folder
    download: bool = False  # torchvision datasets only; off by default (offline-safe)
    val_split: float = 0.1  # fraction of train carved out for validation (when there is no val/)
    test_split: float = 0.15  # used only by datasets without an official test split
    split_seed: int = 42  # the split stays fixed when the training seed changes
    # Sets without their own test split (one image folder, digits, fake): [train, val, test] as
    # counts (seed 004: 400, 92, 10) or fractions (0.8, 0.1, 0.1), shuffled with split_seed.
    # None: test_split, then val_split.
    splits: list[float] | None = None
    max_per_class: int | None = None  # folder: use at most this many files per class (seeded pick)
    # Stored image size (square), applied once at load: folder images, torchvision sets and
    # digits are resized to it, fake generates it. None: folder: transforms.resize, else the
    # images' own size; others: their native size (digits: 32).
    image_size: int | None = None
    max_memory_mb: int = 2048  # folder: decode into memory up to this size, else stream from disk
    # Decoded folders and statistics; None: $CNNBENCH_CACHE, else ~/.cache/cnnbench.
    cache_dir: str | None = None
    # Synthetic data (dataset=fake) only:
    size: int = 256
    channels: int = 3
    num_classes: int = 10


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedulerConfig:
    name: str = "none"
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: final learning rate
    # onecycle (stepped per batch; its peak is optimizer.lr):
    pct_start: float = 0.25  # fraction of the steps spent warming up
    div_factor: float = 25.0  # starting lr = optimizer.lr / div_factor
    final_div_factor: float = 1e4  # final lr = starting lr / final_div_factor
    anneal: str = "cos"  # cos | linear


@dataclass
class TransformsConfig:
    name: str = MISSING
    resize: int | None = None  # resize to resize x resize first (train and eval)
    crop: int | None = None  # final size: train crop per crop_mode, center crop in eval
    crop_mode: CropMode = CropMode.random  # how the train pipeline crops (eval: always center)
    crop_padding: int = 0  # train, crop_mode=random: zero padding before the crop (RandomCrop's)
    # crop_mode=resized: range of the crop's area fraction and of its aspect ratio (w / h).
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = False  # train: random horizontal flip
    normalize: Normalize = Normalize.auto
    mean: list[float] | None = None  # explicit statistics win over `normalize`
    std: list[float] | None = None


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.auto
    threads: int | None = None  # CPU threads; None: all cores available to this process
    channels_last: bool = False
    compile: bool = False
    precision: Precision = Precision.auto  # auto: bf16 where the hardware gains, else fp32


@dataclass
class LoggerConfig:
    name: str = "none"  # none (metrics.csv only) or tensorboard (RUN_DIR/tb)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int | None = None  # None: 2 x batch_size
    seed: int = 0
    # DataLoader workers that decode streamed folders (and scan folders): "auto" (one per core,
    # none for small sets) or a count; in-memory datasets need none.
    num_workers: str = "auto"
    label_smoothing: float = 0.0
    log_interval: int = 50  # steps between host syncs for the progress bar
    resume: str | None = None  # RUN_DIR or auto: continue that run from its last.pt
    progress: bool = True  # tqdm bars (hidden anyway when stderr is not a terminal)


def register_configs() -> None:
    """Register the schemas; the YAML groups merge onto them and are validated."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


def check_values(cfg: Any) -> None:
    """Reject values that have the right type but make no sense, before any work is done."""
    problems = []
    extra = unknown_keys(cfg)
    if extra:
        problems.append(f"unknown key(s) {', '.join(extra)}")
    if cfg.epochs < 1:
        problems.append(f"epochs must be >= 1 (got {cfg.epochs})")
    if cfg.batch_size < 1:
        problems.append(f"batch_size must be >= 1 (got {cfg.batch_size})")
    if cfg.eval_batch_size is not None and cfg.eval_batch_size < 1:
        problems.append(f"eval_batch_size must be >= 1 (got {cfg.eval_batch_size})")
    if cfg.optimizer.lr <= 0:
        problems.append(f"optimizer.lr must be > 0 (got {cfg.optimizer.lr})")
    if cfg.optimizer.weight_decay < 0:
        problems.append(f"optimizer.weight_decay must be >= 0 (got {cfg.optimizer.weight_decay})")
    if not _valid_workers(cfg.num_workers):
        problems.append(f"num_workers must be 'auto' or a count >= 0 (got {cfg.num_workers!r})")
    if cfg.log_interval < 1:
        problems.append(f"log_interval must be >= 1 (got {cfg.log_interval})")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        problems.append(f"label_smoothing must be in [0, 1) (got {cfg.label_smoothing})")
    ds = cfg.dataset
    if not 0.0 < ds.val_split < 1.0:
        problems.append(f"dataset.val_split must be in (0, 1) (got {ds.val_split})")
    if not 0.0 < ds.test_split < 1.0:
        problems.append(f"dataset.test_split must be in (0, 1) (got {ds.test_split})")
    problems += _dataset_problems(ds) + _transforms_problems(cfg.transforms)
    if cfg.optimizer.nesterov and cfg.optimizer.momentum <= 0:
        problems.append("optimizer.nesterov=true needs optimizer.momentum > 0")
    if cfg.device.threads is not None and cfg.device.threads < 1:
        problems.append(f"device.threads must be >= 1 (got {cfg.device.threads})")
    if problems:
        raise CnnbenchError("invalid config: " + "; ".join(problems))


def _valid_workers(value: Any) -> bool:
    text = str(value).strip().lower()
    return text == "auto" or (text.isdigit() and int(text) >= 0)


def _dataset_problems(ds: Any) -> list[str]:
    problems = []
    if ds.splits is not None:
        values = list(ds.splits)
        if len(values) != 3 or any(v < 0 for v in values):
            problems.append(
                f"dataset.splits must be [train, val, test] counts or fractions >= 0 (got {values})"
            )
        elif all(v < 1 for v in values) and sum(values) > 1 + 1e-9:
            problems.append(f"dataset.splits fractions must add up to at most 1 (got {values})")
        elif any(v >= 1 for v in values) and any(v != int(v) for v in values):
            problems.append(
                f"dataset.splits mixes counts and fractions (got {values}); use "
                "counts like [400,92,10] or fractions like [0.8,0.1,0.1]"
            )
    for key in ("max_per_class", "image_size"):
        value = getattr(ds, key)
        if value is not None and value < 1:
            problems.append(f"dataset.{key} must be >= 1 or null (got {value})")
    if ds.max_memory_mb < 0:
        problems.append(f"dataset.max_memory_mb must be >= 0 (got {ds.max_memory_mb})")
    return problems


def _transforms_problems(tf: Any) -> list[str]:
    problems = []
    for key in ("resize", "crop"):
        value = getattr(tf, key)
        if value is not None and value < 1:
            problems.append(f"transforms.{key} must be >= 1 or null (got {value})")
    if tf.crop_padding < 0:
        problems.append(f"transforms.crop_padding must be >= 0 (got {tf.crop_padding})")
    scale, ratio = list(tf.scale), list(tf.ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        problems.append(
            f"transforms.scale must be [low, high] with 0 < low <= high <= 1 (got {scale})"
        )
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        problems.append(f"transforms.ratio must be [low, high] with 0 < low <= high (got {ratio})")
    return problems


def _schema_keys(path: str) -> list[str]:
    """Valid keys under `path` ('' for the top level) according to TrainConfig."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(TrainConfig)
    parent = OmegaConf.select(node, path) if path else node
    return list(parent.keys()) if parent is not None and hasattr(parent, "keys") else []


def unknown_keys(cfg: Any, schema: Any = None, prefix: str = "") -> list[str]:
    """Keys in `cfg` that the schema does not declare (e.g. added with `+key=value`)."""
    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.structured(TrainConfig) if schema is None else schema
    found = []
    for key in cfg.keys():  # noqa: SIM118 (DictConfig: keys() lists MISSING values too)
        if key == "hydra":
            continue
        full = f"{prefix}{key}"
        if key not in schema.keys():  # noqa: SIM118
            found.append(full)
        else:
            sub_schema, sub_cfg = schema._get_node(key), cfg._get_node(key)
            if isinstance(sub_schema, DictConfig) and isinstance(sub_cfg, DictConfig):
                found += unknown_keys(sub_cfg, sub_schema, full + ".")
    return found


def composition_error(err: Exception) -> CnnbenchError:
    """Hydra/OmegaConf composition failures as one message that names the valid choices."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options is not None:
        group = str(err).split("Could not find '")[-1].split("/")[0]
        choice = str(err).split("Could not find '")[-1].split("'")[0].split("/", 1)[-1]
        return CnnbenchError(
            f"unknown {group} option {choice!r}; valid {group} options: {', '.join(err.options)}"
        )
    if "No match in the defaults list" in str(err):  # a group override on a saved run's config
        group = str(err).split("'")[1] if str(err).count("'") >= 2 else "a config group"
        return CnnbenchError(
            f"cannot switch {group}= when continuing a saved run (resume keeps the run's own "
            f"choices); override single keys such as epochs=30, or start a new run with {group}=..."
        )
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        full_key = str(cause.full_key)
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        valid = ", ".join(_schema_keys(parent))
        where = f"in {parent!r}" if parent else "at the top level"
        return CnnbenchError(f"unknown config key {full_key!r}; valid keys {where}: {valid}")
    if isinstance(cause, ValidationError):
        first = str(cause).splitlines()[0]
        return CnnbenchError(f"bad value for {cause.full_key!r}: {first}")
    if isinstance(err, OverrideParseException):
        return CnnbenchError(
            f"cannot parse override: {str(err).splitlines()[0]} (use key=value or group=option)"
        )
    return CnnbenchError(str(err).splitlines()[0] if str(err) else err.__class__.__name__)


def compose_checked(
    overrides: list[str], config_name: str = "train", config_dir: str | None = None
) -> Any:
    """Compose the run config like Hydra would, turning every failure into a CnnbenchError.

    `config_dir` composes a primary config from that directory (a saved run) instead of
    the packaged `train.yaml`.
    """
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        init = (
            initialize_config_dir(str(config_dir), version_base=None)
            if config_dir
            else initialize_config_module("cnnbench.configs", version_base=None)
        )
        with init:
            cfg = compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise composition_error(err) from err
    extra = unknown_keys(cfg)
    if extra:
        raise CnnbenchError(
            f"unknown config key(s) {', '.join(extra)} (added with '+'?); see "
            "`cnnbench train --cfg job` for every key"
        )
    return cfg
