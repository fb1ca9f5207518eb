"""Typed trial configuration (Hydra structured configs): every key, its type, its help, and
whether it changes results.

The YAML files in ``conf/`` only choose values; the schema here fixes every key and type, so a
typo or a wrong type fails when the config is composed. Each field carries its help (shown by
``--help`` and in that field's errors) and whether it is an *execution* setting, one that says
how or where a trial runs but never changes its results (``lottery.identity`` leaves those out
of a trial's identity). Every path derives from ``paths.root``. ``lottery.checks`` validates a
composed config before any work.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

from hydra.core.config_store import ConfigStore


def opt(default=dataclasses.MISSING, help: str = "", *, execution: bool = False, factory=None):
    """A schema field with its help; ``execution=True`` when it never changes results."""
    meta = {"help": help, "execution": execution}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def group(cls, help: str = ""):
    return field(default_factory=cls, metadata={"help": help, "execution": False})


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


def choice(value) -> str:
    """A choice as its name, whether it arrives as an Enum member or a string."""
    return value.value if isinstance(value, enum.Enum) else str(value)


@dataclass
class PathsConfig:
    root: str = opt(".lottery", "the one folder every store, cache, database, table and log derives from",
                    execution=True)


class Stem(enum.Enum):
    default = "default"  # the builder's own
    cifar = "cifar"  # a ResNet's 7x7 stride-2 stem and max-pool replaced by a 3x3 stride-1 conv (32x32 images)


@dataclass
class ModelConfig:
    family: str = opt("cifar_resnet", "model family: cifar_resnet (the paper's), torchvision (model.arch=NAME), "
                                      "custom (model.target=pkg.module:factory)")
    name: Optional[str] = opt(None, "the model's name in run names and tables (None: resnet<depth>, the torchvision "
                                    "arch or the factory's name)", execution=True)
    depth: int = opt(32, "cifar_resnet: depth 6n+2: 20, 32, 44, 56, 110")
    shortcut: Shortcut = opt(Shortcut.B, "cifar_resnet: downsampling shortcut: B = 1x1 projection + BN, A = zero-pad")
    arch: Optional[str] = opt(None, "torchvision: a torchvision.models builder or class, e.g. resnet18, "
                                    "mobilenet_v2, VisionTransformer")
    stem: Stem = opt(Stem.default, "torchvision ResNets: cifar = 3x3 stride-1 first conv and no max-pool")
    kwargs: Dict[str, Any] = opt(help="torchvision and custom: arguments of the builder or factory, added with "
                                      "++model.kwargs.NAME=VALUE (num_classes comes from the data)", factory=dict)
    target: Optional[str] = opt(None, "custom: pkg.module:factory returning the network")
    block_types: List[str] = opt(help="custom: residual block classes (pkg.module:Class, or a registered type such as "
                                      "BasicBlock)", factory=list)
    blocks: List[str] = opt(help="custom: residual blocks by module path (instead of block_types)", factory=list)


@dataclass
class DataConfig:
    name: str = opt("cifar10", "data source: cifar10 (torchvision), imagefolder (data.root=DIR), synthetic")
    root: Optional[str] = opt(None, "cifar10: download/find here (default PATHS/data); imagefolder: "
                                    "DIR/train/<class>/*, DIR/test/<class>/*", execution=True)
    download: bool = opt(True, "cifar10: download when missing", execution=True)
    train_size: Optional[int] = opt(None, "class-balanced training subset (None = the whole split)")
    test_size: Optional[int] = opt(None, "class-balanced test subset (None = the whole split)")
    val_size: Optional[int] = opt(None, "class-balanced validation images held out of the training split "
                                        "(what a search chooses on)")
    cache: str = opt("${paths.root}/cache", "decoded image arrays; never written into a data folder",
                     execution=True)
    num_classes: int = opt(10, "synthetic only; real sets take it from their folders")


@dataclass
class TrainConfig:
    epochs: int = opt(200, "training epochs n of the dense network (a ticket trains n - i)")
    milestones: List[int] = opt(help="epochs at which the learning rate is multiplied by gamma, increasing",
                                factory=lambda: [100, 150])
    gamma: float = opt(0.1, "learning-rate factor at each milestone, in (0, 1]")
    lr: float = opt(0.1, "SGD learning rate at epoch 0, > 0")
    momentum: float = opt(0.9, "SGD momentum, in [0, 1)")
    nesterov: bool = opt(True, "Nesterov momentum")
    weight_decay: float = opt(1e-4, "L2 weight decay, >= 0")
    batch_size: int = opt(128, "training batch size")
    augment: bool = opt(True, "4-pixel pad, random 32x32 crop, horizontal flip")
    rewind_points: List[float] = opt(help="fractions of the schedule (or epochs) at which the dense run keeps "
                                          "theta_i up front (paper: 0, 25, 50, 75 of 200); others are replayed "
                                          "on demand", factory=lambda: [0.0, 0.125, 0.25, 0.375], execution=True)
    eval_batch_size: int = opt(1000, "evaluation batch size")
    amp: Amp = opt(Amp.auto, "precision: auto = bf16 where the device has it natively, off = fp32, bf16")
    channels_last: bool = opt(True, "channels_last memory format (faster convolutions)")
    compile: bool = opt(False, "torch.compile the network once per architecture, static shapes (the last partial "
                               "batch of an epoch is dropped)")
    compile_backend: str = opt("inductor", "torch.compile backend (eager: dynamo alone, for tests)")
    cuda_graph: bool = opt(False, "CUDA: capture the whole training step (augmentation, forward, backward, optimizer) "
                                  "once and replay it (the last partial batch is dropped)")
    deterministic: bool = opt(True, "deterministic algorithms, no cuDNN autotuning: a rerun, a resume or a replay "
                                    "gives the same weights")
    save_every_s: float = opt(60.0, "resumable state at most this often (seconds) and at the end; kept rewind points "
                                    "are written once, when reached", execution=True)
    progress: bool = opt(True, "progress bars on a terminal, one line per epoch otherwise", execution=True)


@dataclass
class CriterionConfig:
    name: str = opt("grasp", "block-importance criterion (see the criterion group)")
    scoring_size: int = opt(500, "class-balanced, unaugmented training images the criterion scores on")
    batch_size: int = opt(250, "scoring chunk size (every chunk holds every class)")
    aggregate: Aggregate = opt(Aggregate.sum, "per-weight scores to a block or filter: sum or mean")
    weights: WeightSet = opt(WeightSet.conv, "weights scored: conv (and linear), or conv_bn (plus BN affine)")
    temperature: float = opt(200.0, "grasp: logits divided by this temperature")
    components: int = opt(10, "pls: number of PLS components")


@dataclass
class PruneConfig:
    rounds: int = opt(1, "remove the density's blocks over this many rounds: at initialization (mode=init) re-scoring "
                         "the smaller network after each; with mode=rewind training and rewinding between rounds "
                         "(layer-wise IMP); 1 = one shot, 0 = one block per round")


@dataclass
class ModeConfig:
    name: str = opt("init", "where the ticket's weights come from (see the mode group)")


@dataclass
class StoreConfig:
    root: str = opt("${paths.root}/store", "content-addressed store of dense runs", execution=True)
    retrain: bool = opt(False, "train the dense entry again even if stored", execution=True)


@dataclass
class TrackingConfig:
    uri: Optional[str] = opt(None, "MLflow tracking URI (None: $MLFLOW_TRACKING_URI, else "
                                   "sqlite:///PATHS/mlflow.db)", execution=True)
    experiment: str = opt("lottery", "MLflow experiment", execution=True)
    parent: Optional[str] = opt(None, "run id of the parent run the trial's runs sit under (set by "
                                      "lottery.sweeps: one role=sweep run per sweep and profile)", execution=True)
    log_model: bool = opt(True, "also log every ticket and dense network as an MLflow model (torch.export; "
                                "mlflow.pytorch.load_model returns it)", execution=True)


@dataclass
class MeasureConfig:
    enabled: bool = opt(True, "cost metrics: FLOPs, memory, throughput, latency, CKA")
    throughput_steps: int = opt(20, "timed training steps of the throughput measurement")
    warmup_steps: int = opt(5, "untimed steps before it")
    latency_repeats: int = opt(20, "forward passes whose median is the latency")
    cka_images: int = opt(1000, "class-balanced test images whose penultimate features CKA compares")
    carbon: bool = opt(True, "codecarbon around every training phase")
    country: str = opt("USA", "ISO 3166 alpha-3 code of the grid's carbon intensity")
    carbon_dir: str = opt("${paths.root}/codecarbon", "codecarbon's output folder", execution=True)
    power_interval_s: float = opt(15.0, "seconds between codecarbon's power readings")


@dataclass
class RobustnessConfig:
    enabled: bool = opt(True, "accuracy on CIFAR-10-C and CIFAR-10.2")
    cifar10c_root: Optional[str] = opt(None, "released CIFAR-10-C folder; None = regenerate from the test split")
    corruptions: List[str] = opt(help="CIFAR-10-C corruptions", factory=lambda: [
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
        "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
        "pixelate", "jpeg_compression"])
    severities: List[int] = opt(help="CIFAR-10-C severities, 1..5", factory=lambda: [1, 2, 3, 4, 5])
    images: Optional[int] = opt(None, "class-balanced test images per corruption and severity; None = all")
    cifar102_path: Optional[str] = opt(None, "cifar102_test.npz (images, labels); None = not measured")
    seed: int = opt(0, "seed of the regenerated corruptions")


@dataclass
class TrialConfig:
    paths: PathsConfig = group(PathsConfig, "where everything is written")
    model: ModelConfig = group(ModelConfig, "the network")
    data: DataConfig = group(DataConfig, "the data")
    train: TrainConfig = group(TrainConfig, "the training recipe (SPEC §5)")
    criterion: CriterionConfig = group(CriterionConfig, "how blocks are scored")
    mode: ModeConfig = group(ModeConfig, "how the ticket gets its weights")
    prune: PruneConfig = group(PruneConfig, "how the blocks go: at once or in rounds")
    store: StoreConfig = group(StoreConfig, "the dense-run store")
    tracking: TrackingConfig = group(TrackingConfig, "MLflow")
    measure: MeasureConfig = group(MeasureConfig, "cost metrics")
    robustness: RobustnessConfig = group(RobustnessConfig, "shifted test sets")
    density: Union[int, float] = opt(1, "blocks to remove: an int is a count, a float in (0, 1) a fraction of "
                                        "the removable blocks")
    rewind_epoch: Union[int, float] = opt(0, "rewind point theta_i: an int is an epoch, a float in (0, 1) a "
                                             "fraction of the schedule")
    structure: str = opt("layer", "layer: remove residual blocks; filter: the structured-LTH baseline; joint: blocks "
                                  "and filters together at the layer ticket's FLOPs (additive criteria, at init)")
    match: str = opt("filters", "filter tickets match the layer ticket's filter count (filters: Table 3) or its "
                                "forward FLOPs (flops)")
    scope: str = opt("global", "filter ranking: global, or layerwise (the same fraction per convolution)")
    target_filters: Optional[int] = opt(None, "filter tickets: None = the layer ticket's filter count")
    seed: int = opt(0, "seed of initialisation, data order and scoring")
    xi: float = opt(0.0, "Eq. 1: the ticket wins when acc(ticket) + xi >= acc(dense), in pp")
    device: str = opt("auto", "auto (cuda when available, else cpu), cpu or cuda[:N]", execution=True)
    threads: Optional[int] = opt(None, "CPU threads of torch; None: torch's default", execution=True)
    jobs: int = opt(1, "trials running at once on this machine (JOBS=N sets it): CO2 per process, no wall-time "
                       "ratios", execution=True)
    profile_name: str = opt("paper", "the profile's name (set by the profile group)")


def register() -> None:
    ConfigStore.instance().store(name="trial_schema", node=TrialConfig)


def schema_fields(cls=TrialConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf field of the schema as (dotted path, field)."""
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):  # a group of fields
            yield from schema_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def help_of(path: str) -> str:
    """The help of a dotted config path (empty when it has none)."""
    return next((f.metadata.get("help", "") for p, f in schema_fields() if p == path), "")


def execution_paths() -> tuple[str, ...]:
    """The dotted paths of every execution setting: they never change a trial's results."""
    return tuple(p for p, f in schema_fields() if f.metadata.get("execution"))


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
