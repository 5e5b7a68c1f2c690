"""Structured config schemas, registered with Hydra's ConfigStore: every key and default, once.

Each option of the model, dataset, optimizer, scheduler, device and logger groups is its own
dataclass, registered in the ConfigStore as that group's option (`dataset=folder` is
`FolderDataset`): a key the chosen option does not use (`scheduler=step
scheduler.pct_start=0.5`) stops the run before any work with one message naming that
option's keys. The model options come from the model catalog (`models/catalog.py`: every
zoo and torchvision model by name, read without importing torch), plus `model=timm`.
Transforms options are presets: YAML files under ``configs/`` that only pick values of one
schema (`TransformsConfig`); so do the recipes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .errors import CnnbenchError
from .models.catalog import TIMM, TIMM_PREFIX, catalog_names


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


class CacheMode(Enum):
    auto = "auto"  # in memory up to max_memory_mb, else the memory-mapped cache on disk
    memory = "memory"  # in memory, whatever the size
    disk = "disk"  # the memory-mapped cache on disk, whatever the size
    off = "off"  # no decoded cache for folders over max_memory_mb: decoded every epoch


class AutoAugmentPolicy(Enum):
    none = "none"
    trivial = "trivial"  # TrivialAugmentWide
    rand = "rand"  # RandAugment (transforms.rand_ops, transforms.rand_magnitude)
    cifar10 = "cifar10"  # AutoAugment's learned policies
    imagenet = "imagenet"
    svhn = "svhn"


class Anneal(Enum):
    cos = "cos"
    linear = "linear"


class Sampler(Enum):
    random = "random"  # each training image once per epoch, shuffled
    balanced = "balanced"  # draws with replacement, every class equally likely


class Monitor(Enum):
    val_loss = "val_loss"  # lower is better
    val_acc = "val_acc"  # higher is better


class TTA(Enum):
    none = "none"
    flip = "flip"  # average the logits of the image and its mirror image


# ---- models: every catalog name is an option of ModelConfig; timm adds `arch`


@dataclass
class ModelConfig:
    name: str = MISSING
    num_classes: int | None = None  # None: from the dataset
    in_channels: int | None = None  # None: from the dataset
    weights: str | None = None  # local state_dict to load (no downloads at run time)
    freeze_features: bool = False  # train only the classifier head


@dataclass
class TimmModelConfig(ModelConfig):
    """Any timm architecture (pip install 'cnnbench[timm]'); the run's model is timm/<arch>."""

    name: str = TIMM_PREFIX + "${.arch}"
    arch: str = MISSING  # a timm.list_models() name, e.g. resnet50, convnext_nano


MODELS: dict[str, ModelConfig] = {
    **{name: ModelConfig(name=name) for name in catalog_names()},
    TIMM: TimmModelConfig(),
}


# ---- transforms: one schema, options are YAML presets of values


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
    # train, per image, after the crops and flips (uint8, torchvision's ops and bins):
    auto_augment: AutoAugmentPolicy = AutoAugmentPolicy.none
    rand_ops: int = 2  # auto_augment=rand: ops per image (RandAugment's num_ops)
    rand_magnitude: int = 9  # auto_augment=rand: magnitude bin, 0..30
    color_jitter: float = 0.0  # brightness/contrast/saturation factors in [1 - s, 1 + s]
    erasing: float = 0.0  # RandomErasing's probability (scale 0.02-0.33, ratio 0.3-3.3)
    # train, per batch: MixUp's / CutMix's Beta(alpha, alpha); 0 is off, both: one per batch
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    normalize: Normalize = Normalize.auto
    mean: list[float] | None = None  # explicit statistics win over `normalize`
    std: list[float] | None = None


# ---- datasets: one schema per option


@dataclass
class DatasetConfig:
    """Keys every dataset has."""

    name: str = MISSING
    val_split: float = 0.1  # fraction of train carved out for validation (when there is no val/)
    split_seed: int = 42  # the split stays fixed when the training seed changes
    # Stored image size (square), applied once at load. None: the images' own size (folder:
    # transforms.resize when given).
    image_size: int | None = None
    # Decoded folders and statistics; None: $CNNBENCH_CACHE, else $XDG_CACHE_HOME/cnnbench.
    cache_dir: str | None = None
    # k-fold cross-validation (sets without their own validation split): validation is fold
    # `fold` (0..folds-1) of the non-test data, stratified by class and seeded by split_seed;
    # training is the other folds; the test split stays fixed. None: val_split.
    folds: int | None = None
    fold: int | None = None
    # How training batches draw images: random (a shuffle per epoch) or balanced (classes
    # equally likely, with replacement); either way a function of (seed, epoch).
    sampler: Sampler = Sampler.random


@dataclass
class OwnSplitsDataset(DatasetConfig):
    """Sets without an official test split: test (and val) are carved with split_seed."""

    test_split: float = 0.15
    # [train, val, test] as counts (seed 004: 400, 92, 10) or fractions (0.8, 0.1, 0.1),
    # shuffled with split_seed. None: test_split, then val_split.
    splits: list[float] | None = None


@dataclass
class DigitsDataset(OwnSplitsDataset):
    """scikit-learn's bundled 8x8 digits (1,797 images), upscaled; offline, no download."""

    name: str = "digits"
    image_size: int | None = 32  # None: the native 8x8


@dataclass
class FakeDataset(OwnSplitsDataset):
    """torchvision's FakeData: seeded random images and labels, for tests and smoke runs."""

    name: str = "fake"
    image_size: int = 32
    size: int = 256
    channels: int = 3
    num_classes: int = 10


@dataclass
class TorchvisionDataset(DatasetConfig):
    """A torchvision dataset's files under `root` (cifar10, cifar100, mnist, fashion_mnist)."""

    root: str = "data"  # the parent folder of torchvision's dataset folder
    download: bool = False  # off by default: offline-safe


@dataclass
class FilesDataset(OwnSplitsDataset):
    """Image files of your own, checked by one scan (folder, csv)."""

    max_memory_mb: int = 2048  # decode into memory up to this size (dataset.cache=auto)
    # Where the decoded pixels live while training: auto (memory up to max_memory_mb, else a
    # memory-mapped file in cache_dir), memory, disk, off (larger sets: re-decoded each epoch).
    cache: CacheMode = CacheMode.auto


@dataclass
class FolderDataset(FilesDataset):
    """Your images: root/<class>/<image>, or root/train|val|test/<class>/<image>."""

    name: str = "folder"
    root: str = "data"
    max_per_class: int | None = None  # use at most this many files per class (seeded pick)


@dataclass
class CsvDataset(FilesDataset):
    """Your images listed in a CSV: columns path,label and an optional split (train/val/test)."""

    name: str = "csv"
    csv: str = "labels.csv"
    root: str | None = None  # the folder the paths are relative to; None: the CSV's folder


@dataclass
class Cifar10Dataset(TorchvisionDataset):
    name: str = "cifar10"


@dataclass
class Cifar100Dataset(TorchvisionDataset):
    name: str = "cifar100"


@dataclass
class MnistDataset(TorchvisionDataset):
    name: str = "mnist"
    image_size: int | None = 32  # 28x28 resized to LeNet-5's 32x32; None keeps 28x28


@dataclass
class FashionMnistDataset(MnistDataset):
    name: str = "fashion_mnist"


DATASETS: dict[str, DatasetConfig] = {
    "digits": DigitsDataset(),
    "fake": FakeDataset(),
    "cifar10": Cifar10Dataset(),
    "cifar100": Cifar100Dataset(),
    "mnist": MnistDataset(),
    "fashion_mnist": FashionMnistDataset(),
    "folder": FolderDataset(),
    "csv": CsvDataset(),
}


# ---- optimizers


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    # false: no weight decay on biases and norm weights (1-d parameters), as timm does.
    decay_norm_and_bias: bool = True
    clip_grad_norm: float | None = None  # clip the gradients' total L2 norm to this (null: off)


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 0.05


@dataclass
class SGDConfig(OptimizerConfig):
    """SGD with momentum 0.9 (seed 004); nesterov=true for Nesterov momentum."""

    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False


OPTIMIZERS: dict[str, OptimizerConfig] = {
    "adam": AdamConfig(),
    "adamw": AdamWConfig(),
    "sgd": SGDConfig(),
}


# ---- learning-rate schedulers


@dataclass
class SchedulerConfig:
    """No schedule: optimizer.lr throughout. Every schedule may start with a linear warmup."""

    name: str = "none"
    # Linear warmup over this many epochs (fractions are optimizer steps; 0: none), from
    # warmup_start_factor x the schedule's first lr up to it; then the schedule, per step.
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1


@dataclass
class StepScheduler(SchedulerConfig):
    """Multiply the learning rate by gamma every step_size epochs."""

    name: str = "step"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class CosineScheduler(SchedulerConfig):
    """Cosine decay from optimizer.lr to min_lr over the run's epochs."""

    name: str = "cosine"
    min_lr: float = 0.0


@dataclass
class OneCycleScheduler(SchedulerConfig):
    """One-cycle, stepped every batch; its peak is optimizer.lr."""

    name: str = "onecycle"
    pct_start: float = 0.25  # fraction of the steps spent warming up
    div_factor: float = 25.0  # starting lr = optimizer.lr / div_factor
    final_div_factor: float = 1e4  # final lr = starting lr / final_div_factor
    anneal: Anneal = Anneal.cos


@dataclass
class PlateauScheduler(SchedulerConfig):
    """ReduceLROnPlateau: multiply the lr by factor when the validation loss has not improved
    for patience epochs (seed 002's author trains AlexNet and VGG so)."""

    name: str = "plateau"
    factor: float = 0.1
    patience: int = 10
    min_lr: float = 0.0


SCHEDULERS: dict[str, SchedulerConfig] = {
    "none": SchedulerConfig(),
    "step": StepScheduler(),
    "cosine": CosineScheduler(),
    "onecycle": OneCycleScheduler(),
    "plateau": PlateauScheduler(),
}


# ---- device and logger


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.auto  # auto: CUDA when available, else CPU
    threads: int | None = None  # CPU threads; None: all cores available to this process
    channels_last: bool = False
    compile: bool = False
    precision: Precision = Precision.auto  # auto: bf16 where the hardware gains, else fp32


DEVICES: dict[str, DeviceConfig] = {d.value: DeviceConfig(name=d) for d in DeviceName}


@dataclass
class LoggerConfig:
    """Where the per-epoch metrics go besides metrics.csv (loggers.py):
    none; tensorboard (RUN_DIR/tb); mlflow (RUN_DIR/mlruns, SQLite, unless
    MLFLOW_TRACKING_URI is set; view with `mlflow ui --backend-store-uri
    sqlite:///RUN_DIR/mlruns/mlflow.db`); wandb (RUN_DIR/wandb, offline unless WANDB_MODE
    says otherwise; upload with `wandb sync RUN_DIR/wandb/offline-run-*`)."""

    name: str = "none"


LOGGERS: dict[str, LoggerConfig] = {
    name: LoggerConfig(name=name) for name in ("none", "tensorboard", "mlflow", "wandb")
}

# Groups whose options are schemas registered here (the others are YAML presets in configs/).
REGISTERED_GROUPS: dict[str, dict[str, Any]] = {
    "model": MODELS,
    "dataset": DATASETS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "device": DEVICES,
    "logger": LOGGERS,
}
GROUPS = ("model", "dataset", "optimizer", "scheduler", "transforms", "device", "logger", "recipe")


def group_options(group: str) -> list[str]:
    """The options of a config group: registered schemas, else the packaged YAML presets."""
    if group in REGISTERED_GROUPS:
        return list(REGISTERED_GROUPS[group])
    from importlib.resources import files

    folder = files("cnnbench.configs") / group
    names = [p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")]
    return sorted(names)


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, validated, kept (best.pt) and tested."""

    decay: float | None = None  # e.g. 0.999 per update (null: off)
    every: int = 1  # optimizer steps between updates
    # The n-th update decays by min(decay, (1 + n) / (10 + n)) (TensorFlow's num_updates), so
    # early averages follow the weights instead of the first ones; false: decay throughout.
    warmup: bool = True


@dataclass
class EarlyStopConfig:
    """Stop when `monitor` has not improved by more than min_delta for patience epochs."""

    patience: int | None = None  # null: off
    min_delta: float = 0.0


@dataclass
class LossConfig:
    # The training loss's class weights: none, balanced (n / (classes x count), as
    # scikit-learn's compute_class_weight) or one weight per class. Val and test are unweighted.
    class_weights: Any = "none"


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    device: DeviceConfig = MISSING
    logger: LoggerConfig = MISSING
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int | None = None  # None: 2 x batch_size
    seed: int = 0
    # DataLoader workers that decode streamed folders (and scan folders): "auto" (one per core,
    # none for small sets) or a count; in-memory datasets need none.
    num_workers: str = "auto"
    label_smoothing: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    accumulate_steps: int = 1  # batches per optimizer step (effective batch = batch x this)
    ema: EmaConfig = field(default_factory=EmaConfig)
    monitor: Monitor = Monitor.val_loss  # which epoch's weights are best.pt (and early_stop's)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    tta: TTA = TTA.none  # test-time augmentation in validation, test and `cnnbench eval`
    log_interval: int = 50  # steps between host syncs for the progress bar
    resume: str | None = None  # RUN_DIR or auto: continue that run from its last.pt
    progress: bool = True  # tqdm bars (hidden anyway when stderr is not a terminal)
    # Debug runs: batches per epoch of each split, a count (>= 1) or a fraction (< 1) of its
    # batches; None: all (recipe=debug: 1 epoch, 2 batches each).
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    limit_test_batches: float | None = None
    # Train and validate on the same N training batches, without augmentation: the loss must
    # reach ~0 (a model or setup that cannot is broken). None: off.
    overfit_batches: int | None = None


# Keys whose values are file system paths: typed unquoted, `~` and all (runs.path_overrides).
PATH_KEYS = (
    "dataset.root",
    "dataset.cache_dir",
    "dataset.csv",
    "model.weights",
    "resume",
    "hydra.run.dir",
    "hydra.sweep.dir",
)


def register_configs() -> None:
    """Register the top-level schema and every group option that is a schema."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, options in REGISTERED_GROUPS.items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)


def eval_batch_size(cfg: Any) -> int:
    """The evaluation batch: eval_batch_size, else 2 x batch_size (no gradients to hold)."""
    return cfg.eval_batch_size or 2 * cfg.batch_size


# ---- checks of values that have the right type but make no sense


def check_values(cfg: Any) -> None:
    """Reject values that have the right type but make no sense, before any work is done."""
    problems = [f"unknown key(s) {', '.join(extra)}" for extra in [unknown_keys(cfg)] if extra]
    problems += _top_level_problems(cfg)
    problems += _dataset_problems(cfg.dataset) + _transforms_problems(cfg.transforms)
    problems += _optimizer_problems(cfg.optimizer) + _scheduler_problems(cfg.scheduler, cfg.epochs)
    problems += _model_problems(cfg.model) + _memory_problems(cfg) + _recipe_tool_problems(cfg)
    if cfg.device.threads is not None and cfg.device.threads < 1:
        problems.append(f"device.threads must be >= 1 (got {cfg.device.threads})")
    if problems:
        raise CnnbenchError("invalid config: " + "; ".join(problems))


def _at_least(value: Any, low: float, key: str) -> list[str]:
    return [] if value is None or value >= low else [f"{key} must be >= {low:g} (got {value})"]


def _top_level_problems(cfg: Any) -> list[str]:
    problems = _at_least(cfg.epochs, 1, "epochs") + _at_least(cfg.batch_size, 1, "batch_size")
    problems += _at_least(cfg.eval_batch_size, 1, "eval_batch_size")
    problems += _at_least(cfg.log_interval, 1, "log_interval")
    if not _valid_workers(cfg.num_workers):
        problems.append(f"num_workers must be 'auto' or a count >= 0 (got {cfg.num_workers!r})")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        problems.append(f"label_smoothing must be in [0, 1) (got {cfg.label_smoothing})")
    for split in ("train", "val", "test"):
        value = cfg[f"limit_{split}_batches"]
        if value is not None and not (0 < value < 1 or (value >= 1 and value == int(value))):
            problems.append(
                f"limit_{split}_batches must be a count of batches (1, 2, ...) or a fraction "
                f"in (0, 1), or null for all (got {value})"
            )
    problems += _at_least(cfg.overfit_batches, 1, "overfit_batches")
    if not 0 <= cfg.seed <= MAX_SEED:
        problems.append(f"seed must be in [0, {MAX_SEED}] (numpy's seed range; got {cfg.seed})")
    return problems


MAX_SEED = 2**32 - 1


def _model_problems(model: Any) -> list[str]:
    problems = _at_least(model.in_channels, 1, "model.in_channels") + _timm_problems(model)
    if model.num_classes is not None and model.num_classes < 2:
        problems.append(
            f"model.num_classes must be >= 2 or null (got {model.num_classes}): a classifier "
            "needs at least two classes"
        )
    return problems


def _scheduler_problems(sched: Any, epochs: int) -> list[str]:
    problems = _at_least(sched.get("step_size"), 1, "scheduler.step_size")
    problems += _at_least(sched.get("min_lr"), 0, "scheduler.min_lr")
    for key in ("gamma", "div_factor", "final_div_factor"):
        value = sched.get(key)
        if value is not None and not (math.isfinite(value) and value > 0):
            problems.append(f"scheduler.{key} must be a finite number > 0 (got {value})")
    pct = sched.get("pct_start")
    if pct is not None and not 0.0 < pct < 1.0:
        problems.append(f"scheduler.pct_start must be in (0, 1) (got {pct})")
    return problems + _warmup_and_plateau_problems(sched, epochs)


def _warmup_and_plateau_problems(sched: Any, epochs: int) -> list[str]:
    problems = _at_least(sched.warmup_epochs, 0, "scheduler.warmup_epochs")
    if sched.warmup_epochs > 0 and epochs >= 1 and sched.warmup_epochs >= epochs:
        problems.append(
            f"scheduler.warmup_epochs ({sched.warmup_epochs:g}) must be less than epochs "
            f"({epochs}): the schedule needs steps after the warmup"
        )
    if not 0.0 < sched.warmup_start_factor <= 1.0:
        problems.append(
            f"scheduler.warmup_start_factor must be in (0, 1] (got {sched.warmup_start_factor})"
        )
    if sched.name == "plateau":
        if not 0.0 < sched.factor < 1.0:
            problems.append(f"scheduler.factor must be in (0, 1) (got {sched.factor})")
        problems += _at_least(sched.patience, 0, "scheduler.patience")
    return problems


def _valid_workers(value: Any) -> bool:
    text = str(value).strip().lower()
    return text == "auto" or (text.isdigit() and int(text) >= 0)


def _optimizer_problems(opt: Any) -> list[str]:
    problems = []
    if not (math.isfinite(opt.lr) and opt.lr > 0):
        problems.append(f"optimizer.lr must be a finite number > 0 (got {opt.lr})")
    problems += _at_least(opt.weight_decay, 0, "optimizer.weight_decay")
    if "momentum" in opt:
        problems += _at_least(opt.momentum, 0, "optimizer.momentum")
        if opt.nesterov and opt.momentum <= 0:
            problems.append("optimizer.nesterov=true needs optimizer.momentum > 0")
    if "betas" in opt:
        betas = list(opt.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            problems.append(f"optimizer.betas must be two values in [0, 1) (got {betas})")
    return problems


def _timm_problems(model: Any) -> list[str]:
    """model=timm: an architecture is named and timm is installed (checked without importing)."""
    if "arch" not in model.keys():  # noqa: SIM118 (keys() lists MISSING values too)
        return []
    from importlib.util import find_spec

    from omegaconf import OmegaConf

    if OmegaConf.is_missing(model, "arch"):
        return ["model=timm needs model.arch=NAME (a timm architecture, e.g. resnet50)"]
    if find_spec("timm") is None:
        return ["model=timm needs timm, which is not installed: pip install 'cnnbench[timm]'"]
    return []


def _recipe_tool_problems(cfg: Any) -> list[str]:
    """accumulate_steps, ema, early_stop, loss.class_weights, optimizer.clip_grad_norm."""
    problems = _at_least(cfg.accumulate_steps, 1, "accumulate_steps")
    problems += _at_least(cfg.ema.every, 1, "ema.every")
    if cfg.ema.decay is not None and not 0.0 < cfg.ema.decay < 1.0:
        problems.append(f"ema.decay must be in (0, 1) or null (got {cfg.ema.decay})")
    problems += _at_least(cfg.early_stop.patience, 1, "early_stop.patience")
    problems += _at_least(cfg.early_stop.min_delta, 0, "early_stop.min_delta")
    clip = cfg.optimizer.clip_grad_norm
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        problems.append(
            f"optimizer.clip_grad_norm must be a finite number > 0 or null (got {clip})"
        )
    return problems + class_weights_problems(cfg.loss.class_weights)


def class_weights_problems(weights: Any) -> list[str]:
    """loss.class_weights: none, balanced, or a list of numbers >= 0 (not all zero)."""
    if weights is None or (isinstance(weights, str) and weights in ("none", "balanced")):
        return []
    try:
        values = [float(w) for w in weights] if not isinstance(weights, str) else None
    except (TypeError, ValueError):
        values = None
    if values is None or not values or min(values) < 0 or max(values) <= 0:
        return [
            "loss.class_weights must be none, balanced or a list of one weight >= 0 per class, "
            f"e.g. [1,5] (got {weights})"
        ]
    return []


def _dataset_problems(ds: Any) -> list[str]:
    problems = []
    for key in ("val_split", "test_split"):
        value = ds.get(key)
        if value is not None and not 0.0 < value < 1.0:
            problems.append(f"dataset.{key} must be in (0, 1) (got {value})")
    if ds.get("splits") is not None:
        problems += _splits_problems(list(ds.splits))
    for key in ("max_per_class", "image_size"):
        value = ds.get(key)
        if value is not None and value < 1:
            problems.append(f"dataset.{key} must be >= 1 or null (got {value})")
    problems += _at_least(ds.get("max_memory_mb"), 0, "dataset.max_memory_mb")
    problems += _folds_problems(ds.folds, ds.fold)
    if ds.name == "fake" and ds.image_size is None:
        problems.append("dataset=fake generates images of dataset.image_size: set it (e.g. 32)")
    problems += _at_least(ds.get("size"), 1, "dataset.size")
    problems += _at_least(ds.get("channels"), 1, "dataset.channels")
    if ds.get("num_classes") is not None and ds.num_classes < 2:
        problems.append(
            f"dataset.num_classes must be >= 2 (got {ds.num_classes}): a classifier needs at "
            "least two classes"
        )
    return problems


def _folds_problems(folds: int | None, fold: int | None) -> list[str]:
    if folds is None and fold is None:
        return []
    if folds is None or fold is None:
        return [
            "k-fold needs both dataset.folds=K and dataset.fold=i (0..K-1), e.g. "
            "`cnnbench train -m dataset.folds=5 'dataset.fold=range(5)'`"
        ]
    if folds < 2:
        return [f"dataset.folds must be >= 2 (got {folds})"]
    if not 0 <= fold < folds:
        return [f"dataset.fold must be in 0..{folds - 1} for dataset.folds={folds} (got {fold})"]
    return []


def _splits_problems(values: list[float]) -> list[str]:
    if len(values) != 3 or any(v < 0 for v in values):
        return [
            f"dataset.splits must be [train, val, test] counts or fractions >= 0 (got {values})"
        ]
    if all(v < 1 for v in values) and sum(values) > 1 + 1e-9:
        return [f"dataset.splits fractions must add up to at most 1 (got {values})"]
    if any(v >= 1 for v in values) and any(v != int(v) for v in values):
        return [
            f"dataset.splits mixes counts and fractions (got {values}); use "
            "counts like [400,92,10] or fractions like [0.8,0.1,0.1]"
        ]
    return []


def _transforms_problems(tf: Any) -> list[str]:
    problems = []
    for key in ("resize", "crop"):
        value = getattr(tf, key)
        if value is not None and value < 1:
            problems.append(f"transforms.{key} must be >= 1 or null (got {value})")
    problems += _at_least(tf.crop_padding, 0, "transforms.crop_padding")
    scale, ratio = list(tf.scale), list(tf.ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        problems.append(
            f"transforms.scale must be [low, high] with 0 < low <= high <= 1 (got {scale})"
        )
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        problems.append(f"transforms.ratio must be [low, high] with 0 < low <= high (got {ratio})")
    if tf.std is not None and not all(math.isfinite(v) and v > 0 for v in tf.std):
        problems.append(
            f"transforms.std must be > 0 for every channel (got {list(tf.std)}): normalizing "
            "divides by it"
        )
    return problems + _augmentation_problems(tf)


def _augmentation_problems(tf: Any) -> list[str]:
    problems = _at_least(tf.rand_ops, 0, "transforms.rand_ops")
    if not 0 <= tf.rand_magnitude <= 30:
        problems.append(
            f"transforms.rand_magnitude must be a bin in 0..30 (got {tf.rand_magnitude})"
        )
    if not 0.0 <= tf.erasing <= 1.0:
        problems.append(f"transforms.erasing is a probability in [0, 1] (got {tf.erasing})")
    for key in ("color_jitter", "mixup_alpha", "cutmix_alpha"):
        value = getattr(tf, key)
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"transforms.{key} must be >= 0, 0 is off (got {value})")
    return problems


def _memory_problems(cfg: Any) -> list[str]:
    """An image size beyond this machine's memory, refused before anything is allocated.

    The least a run needs: one float32 training batch at the largest of dataset.image_size,
    transforms.resize and transforms.crop, and a fake set's images (uint8) in memory.
    """
    ds, tf = cfg.dataset, cfg.transforms
    sizes = {"dataset.image_size": ds.get("image_size"), "transforms.resize": tf.resize}
    sizes["transforms.crop"] = tf.crop
    key, side = max(((k, v) for k, v in sizes.items() if v), key=lambda kv: kv[1], default=(0, 0))
    total = _physical_memory()
    if not side or total is None:
        return []
    channels = ds.get("channels") or 1
    need = cfg.batch_size * channels * side * side * 4
    what = f"a batch of {cfg.batch_size} {channels}x{side}x{side} images as float32"
    if ds.get("size") is not None and ds.size * channels * ds.image_size**2 > need:
        need, side = ds.size * channels * ds.image_size**2, ds.image_size
        key, what = "dataset.image_size", f"{ds.size} images of {channels}x{side}x{side} pixels"
    if need <= total:
        return []
    return [
        f"{key}={side} needs at least {need / 2**30:,.1f} GiB ({what}), more than this "
        f"machine's {total / 2**30:,.1f} GiB of memory; use a smaller {key}"
    ]


def _physical_memory() -> int | None:
    """Bytes of RAM (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---- keys: which exist, for the chosen options


def option_keys(schema: Any) -> list[str]:
    """The keys of a schema (a dataclass or an instance of one)."""
    return [f.name for f in fields(schema)] if is_dataclass(schema) else []


def _node_schema(node: Any) -> Any:
    """The dataclass a composed config node was built from (None for plain nodes)."""
    from omegaconf import DictConfig, OmegaConf

    kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return kind if kind is not None and is_dataclass(kind) else None


def unknown_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Keys in `cfg` that its node's schema does not declare (e.g. added with `+key=value`)."""
    from omegaconf import DictConfig

    schema = _node_schema(cfg)
    if schema is None:
        return []
    declared = set(option_keys(schema))
    found = []
    for key in cfg.keys():  # noqa: SIM118 (DictConfig: keys() lists MISSING values too)
        if key == "hydra":
            continue
        if key not in declared:
            found.append(f"{prefix}{key}")
        elif isinstance(cfg._get_node(key), DictConfig):
            found += unknown_keys(cfg._get_node(key), f"{prefix}{key}.")
    return found


def group_schemas(group: str) -> list[Any]:
    """The schemas a group's options are checked against (one for preset groups)."""
    if group in REGISTERED_GROUPS:
        return list(REGISTERED_GROUPS[group].values())
    nodes = {"transforms": TransformsConfig, "loss": LossConfig}
    nodes.update(ema=EmaConfig, early_stop=EarlyStopConfig)
    return [nodes[group]] if group in nodes else []


def is_config_key(key: str) -> bool:
    """True for a group (`device`), a top-level key (`epochs`) or a key some option of a group
    has (`device.name`, `dataset.root`)."""
    head, _, rest = key.partition(".")
    if not rest:
        return head in GROUPS or head in option_keys(TrainConfig)
    return any(rest in option_keys(schema) for schema in group_schemas(head))


def options_with_key(group: str, key: str) -> list[str]:
    """The registered options of `group` that have `key`, the likeliest meant one first
    (`dataset.root` is most often a folder of one's own images)."""
    options = REGISTERED_GROUPS.get(group, {})
    found = [name for name, node in options.items() if key in option_keys(node)]
    return sorted(found, key=lambda name: name != "folder")


def _typed_value(full_key: str, overrides: list[str]) -> str:
    """What the user typed for `full_key` on the command line ('...' when not found)."""
    typed = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").startswith(f"{full_key}=")]
    return typed[-1] if typed else "..."


def _chosen_option(group: str, overrides: list[str]) -> str:
    """The option of `group` picked on the command line, else train.yaml's default."""
    typed = _typed_value(group, overrides)
    if typed != "...":
        return typed
    from importlib.resources import files

    from omegaconf import OmegaConf

    primary = OmegaConf.load(str(files("cnnbench.configs") / "train.yaml"))
    defaults = OmegaConf.to_container(primary)["defaults"]
    picked = [d[group] for d in defaults if isinstance(d, dict) and group in d]
    return str(picked[0]) if picked else "..."


def _unknown_key_error(full_key: str, schema: Any, overrides: list[str]) -> CnnbenchError:
    parent, _, key = full_key.rpartition(".")
    valid = ", ".join(option_keys(schema)) if schema is not None else ""
    if parent in REGISTERED_GROUPS and schema is not None:
        chosen = getattr(schema, "name", None)
        chosen = chosen.value if isinstance(chosen, Enum) else chosen
        if chosen == MISSING:  # model options share one schema: the option picked
            chosen = _chosen_option(parent, overrides)
        others = options_with_key(parent, key)
        if not others:
            return CnnbenchError(
                f"unknown config key {full_key!r}; valid keys in {parent!r} "
                f"({parent}={chosen}): {valid}"
            )
        value = _typed_value(full_key, overrides)
        hint = f"did you mean {parent}={others[0]} {full_key}={value}?"
        if len(others) > 1:
            hint += f" (also a key of {parent}={'/'.join(others[1:])})"
        return CnnbenchError(
            f"{full_key} is not used by {parent}={chosen} (its keys: {valid}); {hint}"
        )
    where = f"in {parent!r}" if parent else "at the top level"
    return CnnbenchError(f"unknown config key {full_key!r}; valid keys {where}: {valid}")


def composition_error(err: Exception, overrides: list[str] = ()) -> CnnbenchError:
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
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        full_key = str(cause.full_key)
        schema = cause.object_type if is_dataclass(cause.object_type) else None
        schema = schema or (TrainConfig if "." not in full_key else None)
        return _unknown_key_error(full_key, schema, list(overrides))
    if isinstance(cause, ValidationError):
        first = str(cause).splitlines()[0]
        return CnnbenchError(f"bad value for {cause.full_key!r}: {first}")
    if isinstance(err, OverrideParseException):
        key, _, value = err.override.partition("=")
        return CnnbenchError(
            f"cannot parse override {err.override!r}: {str(err).splitlines()[0]}. Overrides are "
            f"key=value or group=option; a value with characters Hydra reads as syntax "
            f"(~ # ( ) [ ] , = ' or letters outside ASCII) must be quoted for Hydra, inside the shell's quotes: "
            f"\"{key}='{value}'\""
        )
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "In 'recipe/x': ... composing config:"
        return CnnbenchError(
            f"{lines[0]} {lines[1]} (a recipe's key that the chosen option does not have: "
            "choose an option that has it, or leave the recipe out)"
        )
    return CnnbenchError(lines[0] if lines else err.__class__.__name__)


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
        raise composition_error(err, overrides) from err
    extra = unknown_keys(cfg)
    if extra:
        raise CnnbenchError(
            f"unknown config key(s) {', '.join(extra)} (added with '+'?); see "
            "`cnnbench train --cfg job` for every key"
        )
    return cfg
