"""Typed trial configuration (Hydra structured configs) and its validation at the door.

The YAML files in ``conf/`` only choose values; the schema here fixes every key and type, so a
typo or a wrong type fails when the config is composed, and ``validate`` turns every remaining
mistake (density too large, missing data folder, ...) into one clear line before any work.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from hydra.core.config_store import ConfigStore

from lottery.errors import LotteryError


class Shortcut(enum.Enum):
    A = "A"  # parameter-free: subsample and zero-pad the new channels
    B = "B"  # 1x1 convolution projection + BN


class Aggregate(enum.Enum):
    sum = "sum"
    mean = "mean"


class WeightSet(enum.Enum):
    conv = "conv"
    conv_bn = "conv_bn"


class Amp(enum.Enum):
    auto = "auto"  # bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32
    off = "off"  # fp32 everywhere
    bf16 = "bf16"  # bf16 autocast even where it is emulated (slow)


@dataclass
class ModelConfig:
    depth: int = 32
    shortcut: Shortcut = Shortcut.B


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: Optional[str] = None  # cifar10: download/find here (default .lottery/data)
    download: bool = True
    train_size: Optional[int] = None  # class-balanced subset; None = the whole split
    test_size: Optional[int] = None
    # Class-balanced validation images held out of the training split (searches select on it).
    val_size: Optional[int] = None
    cache: str = ".lottery/cache"  # decoded image arrays; never written into a data folder
    num_classes: int = 10  # synthetic only; real sets take it from their folders


@dataclass
class TrainConfig:
    epochs: int = 200
    milestones: List[int] = field(default_factory=lambda: [100, 150])
    gamma: float = 0.1
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    batch_size: int = 128
    augment: bool = True
    # Fractions of the schedule at which the dense run keeps theta_i (paper: 0, 25, 50, 75 of 200).
    rewind_points: List[float] = field(default_factory=lambda: [0.0, 0.125, 0.25, 0.375])
    eval_batch_size: int = 1000
    amp: Amp = Amp.auto  # mixed precision of training and evaluation (see ``Amp``)
    channels_last: bool = True
    compile: bool = False
    progress: bool = True


@dataclass
class CriterionConfig:
    name: str = "grasp"
    scoring_size: int = 500  # class-balanced, unaugmented images from the training split
    batch_size: int = 250
    aggregate: Aggregate = Aggregate.sum
    weights: WeightSet = WeightSet.conv
    temperature: float = 200.0  # grasp: logits / T
    components: int = 10  # pls: number of PLS components


@dataclass
class ModeConfig:
    name: str = "init"


@dataclass
class StoreConfig:
    root: str = ".lottery/store"
    retrain: bool = False  # train the dense entry again even if stored (e.g. to add rewind points)


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///.lottery/mlflow.db
    experiment: str = "lottery"


@dataclass
class MeasureConfig:
    enabled: bool = True  # cost metrics: FLOPs, memory, throughput, latency, CKA
    throughput_steps: int = 20
    warmup_steps: int = 5
    latency_repeats: int = 20
    cka_images: int = 1000  # test images whose penultimate features CKA compares
    carbon: bool = True  # codecarbon around every training phase
    country: str = "USA"  # ISO 3166 alpha-3 code of the grid's carbon intensity
    carbon_dir: str = ".lottery/codecarbon"
    power_interval_s: float = 15.0


@dataclass
class RobustnessConfig:
    enabled: bool = True
    cifar10c_root: Optional[str] = None  # released CIFAR-10-C folder; None = regenerate
    corruptions: List[str] = field(default_factory=lambda: [
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
        "pixelate", "jpeg_compression"])
    severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    images: Optional[int] = None  # test images per corruption and severity; None = all
    cifar102_path: Optional[str] = None  # cifar102_test.npz
    seed: int = 0


@dataclass
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    # Blocks to remove: an int is a count, a float in (0, 1) a fraction of the removable blocks.
    density: Union[int, float] = 1
    # Rewind point theta_i: an int is an epoch, a float in (0, 1) a fraction of the schedule.
    rewind_epoch: Union[int, float] = 0
    structure: str = "layer"  # layer: remove residual blocks; filter: the structured-LTH baseline
    scope: str = "global"  # filter ranking: global, or layerwise (same fraction per convolution)
    target_filters: Optional[int] = None  # filter tickets: None = the layer ticket's filter count
    seed: int = 0
    xi: float = 0.0  # Eq. 1: the ticket wins when acc(ticket) + xi >= acc(dense), in pp
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: Optional[int] = None  # CPU threads of torch; None: torch's default (parallel jobs set it)
    jobs: int = 1  # trials running at once on this machine (set by JOBS=N): CO2 per process, no wall-time ratios
    profile_name: str = "paper"


def register() -> None:
    ConfigStore.instance().store(name="trial_schema", node=TrialConfig)


# --------------------------------------------------------------------------------------------
# Derived values every module agrees on


def blocks_to_remove(density, removable: int) -> int:
    """The number of blocks a density asks for (see ``TrialConfig.density``)."""
    if isinstance(density, float) and not density.is_integer():
        return max(1, round(density * removable))
    return int(density)


def epoch_of(point, epochs: int) -> int:
    """An epoch given as an int, or as a fraction of a schedule of ``epochs`` epochs."""
    if isinstance(point, float) and not point.is_integer():
        return int(math.floor(point * epochs + 1e-9))
    return int(point)


def rewind_epochs(train: TrainConfig) -> list[int]:
    """The epochs whose weights the dense run keeps (theta_0 always among them)."""
    return sorted({0, *(epoch_of(float(f), train.epochs) if f < 1 else int(f) for f in train.rewind_points)})


# --------------------------------------------------------------------------------------------
# Validation: every mistake a user can make, said in one line, before any work


def _choice(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise LotteryError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(valid))}")


def validate(cfg) -> None:
    """Raise ``LotteryError`` for the first problem found in a composed trial config."""
    from lottery.criteria import CRITERIA, filter_criteria
    from lottery.data import SOURCES
    from lottery.pruning import STRUCTURES
    from lottery.models import resnet_plan
    from lottery.modes import MODES

    _choice("criterion", cfg.criterion.name, CRITERIA)
    _choice("mode", cfg.mode.name, MODES)
    _choice("data set", cfg.data.name, SOURCES)

    try:
        plan = resnet_plan(cfg.model.depth, cfg.model.shortcut.value)
    except ValueError as e:
        raise LotteryError(f"model.depth={cfg.model.depth}: {e}") from None

    t = cfg.train
    if cfg.jobs < 1:
        raise LotteryError(f"jobs={cfg.jobs}: at least one trial runs")
    if t.epochs < 1:
        raise LotteryError(f"train.epochs={t.epochs}: train for at least one epoch")
    if t.batch_size < 1 or t.eval_batch_size < 1:
        raise LotteryError("train.batch_size and train.eval_batch_size must be positive")
    bad = [m for m in t.milestones if not 0 < m < t.epochs]
    if bad:
        raise LotteryError(f"train.milestones {bad} lie outside the schedule (1..{t.epochs - 1})")
    if list(t.milestones) != sorted(set(t.milestones)):
        raise LotteryError(f"train.milestones {list(t.milestones)} must be strictly increasing")
    for key, ok, rule in (("lr", t.lr > 0, "> 0"), ("momentum", 0 <= t.momentum < 1, "in [0, 1)"),
                          ("weight_decay", t.weight_decay >= 0, ">= 0"), ("gamma", 0 < t.gamma <= 1, "in (0, 1]")):
        if not ok:
            raise LotteryError(f"train.{key}={getattr(t, key)}: must be {rule}")

    mode = MODES[cfg.mode.name]
    if mode.prunes:
        d = cfg.density
        if isinstance(d, float) and not d.is_integer() and not 0 < d < 1:
            raise LotteryError(f"density={d}: give a block count (int) or a fraction in (0, 1)")
        count = blocks_to_remove(d, len(plan.removable))
        if count < 1:
            raise LotteryError(f"density={d}: remove at least one block (use mode=dense for none)")
        if count > plan.max_removable:
            raise LotteryError(
                f"density={d} is above resnet{cfg.model.depth}'s maximum of {plan.max_removable} "
                f"blocks ({len(plan.removable)} removable, every stage keeps one)"
            )
    if mode.rewinds:
        r = cfg.rewind_epoch
        i = epoch_of(r, t.epochs)
        if isinstance(r, float) and not r.is_integer() and not 0 <= r < 1:
            raise LotteryError(f"rewind_epoch={r}: give an epoch (int) or a fraction in [0, 1)")
        if not 0 <= i < t.epochs:
            raise LotteryError(f"rewind_epoch={r} lies outside the schedule [0, {t.epochs})")

    for key in ("train_size", "test_size", "val_size"):
        size = getattr(cfg.data, key)
        if size is not None and size < cfg.data.num_classes:
            raise LotteryError(f"data.{key}={size}: need at least one image per class")

    _choice("structure", cfg.structure, STRUCTURES)
    _choice("scope", cfg.scope, ("global", "layerwise"))
    crit = CRITERIA[cfg.criterion.name]
    if mode.prunes and cfg.structure == "filter" and crit.filters is None:
        raise LotteryError(f"structure=filter needs a criterion that scores filters: "
                           f"{', '.join(filter_criteria())} (got {cfg.criterion.name})")
    if mode.prunes and cfg.structure == "filter" and cfg.target_filters is not None:
        from lottery.surgery import check_filter_target

        check_filter_target(plan, cfg.target_filters, f"target_filters={cfg.target_filters}",
                            f"resnet{cfg.model.depth}")
    if mode.prunes and crit.needs_data:
        n = cfg.criterion.scoring_size
        if n < 1:
            raise LotteryError(
                f"criterion {cfg.criterion.name} needs scoring data: set criterion.scoring_size >= 1"
            )
        if cfg.data.train_size is not None and n > cfg.data.train_size:
            raise LotteryError(
                f"criterion.scoring_size={n} exceeds data.train_size={cfg.data.train_size}"
            )

    SOURCES[cfg.data.name].check(cfg.data)

    from lottery.corruptions import CORRUPTIONS

    r = cfg.robustness
    for name in r.corruptions:
        _choice("corruption", name, CORRUPTIONS)
    if any(not 1 <= s <= 5 for s in r.severities):
        raise LotteryError(f"robustness.severities={list(r.severities)}: severities run from 1 to 5")
    for key in ("cifar10c_root", "cifar102_path"):
        path = getattr(r, key)
        if r.enabled and path and not Path(path).expanduser().exists():
            raise LotteryError(f"robustness.{key}={path} does not exist")

    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise LotteryError(f"device={cfg.device}: use auto, cpu or cuda[:N]")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise LotteryError(f"device={cfg.device} but no CUDA device is available; use device=cpu")


def resolve_path(p: str) -> Path:
    return Path(p).expanduser().resolve()
