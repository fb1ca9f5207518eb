"""Typed trial configuration (Hydra structured configs), and the registries whose kinds extend it.

The YAML files in ``conf/`` only choose values; the schema here fixes every key and type, so a
typo or a wrong type fails when the config is composed. Each field carries its help (shown by
``--help`` and in that field's errors) and whether it is an *execution* setting, one that says
how or where a trial runs but never changes its results (``lottery.experiment.identity`` leaves
those out of a trial's identity). Every path derives from ``paths.root``.

A concept with several kinds (model families, criteria, data sources, structures, modes) is a
``Registry``. A kind that has settings of its own declares them in its own module, as a dataclass
extending its group's schema here (``ModelConfig``, ``CriterionConfig``, ``DataConfig``); the
registry stores it with Hydra as ``schema/<group>/<name>``, and the kind's YAML file extends it
(``defaults: [/schema/criterion/grasp@_here_, _self_]``). So a new criterion with a
hyperparameter is one module and one YAML file, and this schema never names it.

This module imports only ``lottery.errors`` (and Hydra's config store).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, Iterator, List, Optional, TypeVar, Union

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lottery.errors import LotteryError, check_choice

T = TypeVar("T")
CONF = Path(__file__).resolve().parent.parent / "conf"  # the YAML files that choose values


def opt(default=dataclasses.MISSING, help: str = "", *, execution: bool = False, factory=None):
    """A schema field with its help; ``execution=True`` when it never changes results."""
    meta = {"help": help, "execution": execution}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def group(cls, help: str = ""):
    return field(default_factory=cls, metadata={"help": help, "execution": False})


class Aggregate(enum.Enum):
    sum = "sum"
    mean = "mean"


class WeightSet(enum.Enum):
    conv = "conv"
    conv_bn = "conv_bn"


class Ties(enum.Enum):
    refuse = "refuse"  # scores that cannot tell the blocks to remove from those kept stop the trial
    index = "index"  # block order decides among tied blocks; the run is tagged so


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


@dataclass
class ModelConfig:
    """What every model family reads; each family extends it with its own keys (``lottery.networks``)."""

    family: str = opt("cifar_resnet", "model family, chosen by the model group's file (model=...); --help "
                                      "lists the files")
    name: Optional[str] = opt(None, "the model's name in run names and tables (None: the family's own, e.g. "
                                    "resnet<depth> or the torchvision arch)", execution=True)


@dataclass
class DataConfig:
    """What every data source reads; each source extends it with its own keys (``lottery.training.sources``)."""

    name: str = opt("cifar10", "data source (the data group's files choose it)")
    train_size: Optional[int] = opt(None, "class-balanced training subset (None = the whole split)")
    test_size: Optional[int] = opt(None, "class-balanced test subset (None = the whole split)")
    val_size: Optional[int] = opt(None, "class-balanced validation images held out of the training split "
                                        "(what a search chooses on)")
    cache: str = opt("${paths.root}/cache", "decoded image arrays; never written into a data folder",
                     execution=True)


@dataclass
class TrainConfig:
    epochs: int = opt(200, "training epochs n of the dense network (a ticket trains n - i)")
    warmup_epochs: float = opt(0.0, "linear warm-up over this many epochs, step by step from lr / steps (0: none)")
    warmup_fraction: float = opt(0.0, "a warm-up over this share of the schedule, in [0, 1), after warmup_epochs")
    clip_norm: Optional[float] = opt(None, "clip the gradients' global L2 norm to this before each step (None: off, "
                                           "the paper's recipe)")
    batch_size: int = opt(128, "training batch size")
    augment: bool = opt(True, "4-pixel pad, random 32x32 crop, horizontal flip")
    rewind_points: List[float] = opt(help="fractions of the schedule (or epochs) at which the dense run keeps "
                                          "theta_i up front (paper: 0, 25, 50, 75 of 200); others are replayed "
                                          "on demand", factory=lambda: [0.0, 0.125, 0.25, 0.375], execution=True)
    eval_batch_size: int = opt(1000, "evaluation batch size")
    amp: Amp = opt(Amp.auto, "precision: auto = bf16 where the device has it natively, off = fp32, bf16")
    channels_last: Optional[bool] = opt(None, "channels_last memory format of images; null: the faster layout on "
                                              "this device, timed once per architecture and remembered in the store "
                                              "(docs/design.md §5.1)", execution=True)
    compile: Optional[bool] = opt(None, "torch.compile the network once per architecture, static shapes (a last "
                                        "partial batch runs eagerly); null: where it is faster on this device and "
                                        "pays for its compile within the training (§5.1)", execution=True)
    compile_backend: str = opt("inductor", "torch.compile backend (eager: dynamo alone, for tests)", execution=True)
    cuda_graph: bool = opt(False, "CUDA: capture the whole training step (augmentation, forward, backward, optimizer) "
                                  "once and replay it (the last partial batch is dropped)")
    deterministic: bool = opt(True, "deterministic algorithms, no cuDNN autotuning: a rerun, a resume or a replay "
                                    "gives the same weights")
    save_every_s: float = opt(60.0, "resumable state at most this often (seconds) and at the end; kept rewind points "
                                    "are written once, when reached", execution=True)
    progress: bool = opt(True, "progress bars on a terminal, one line per epoch otherwise", execution=True)


@dataclass
class OptimConfig:
    """What every optimizer reads; each kind extends it with its own keys (``lottery.training.optimizers``)."""

    name: str = opt("sgd", "optimizer (the optim group's files choose it)")
    lr: float = opt(0.1, "peak learning rate: reached after the warm-up, then decayed by the schedule; > 0")
    weight_decay: float = opt(1e-4, "weight decay, >= 0 (as the optimizer kind applies it, to what it decays)")
    lr_batch: Optional[int] = opt(None, "optim.lr is per this batch (x train.batch_size / lr_batch); null: as is")
    rewind_state: bool = opt(False, "a ticket rewound to theta_i takes the dense optimizer's state there (else fresh)")


@dataclass
class ScheduleConfig:
    """What every learning-rate schedule reads; each kind extends it (``lottery.training.schedules``)."""

    name: str = opt("step", "learning-rate schedule after the warm-up (the schedule group's files choose it)")


@dataclass
class CriterionConfig:
    """What every criterion reads; a criterion with hyperparameters extends it (``lottery.pruning.criteria``)."""

    name: str = opt("grasp", "block-importance criterion (see the criterion group)")
    scoring_size: int = opt(500, "class-balanced, unaugmented training images the criterion scores on")
    batch_size: int = opt(250, "scoring chunk size (every chunk holds every class)")
    aggregate: Aggregate = opt(Aggregate.sum, "per-weight scores to a block or filter: sum or mean")
    weights: WeightSet = opt(WeightSet.conv, "weights scored: conv (and linear), or conv_bn (plus BN affine)")
    ties: Ties = opt(Ties.refuse, "scores that tie where they decide which blocks go: refuse (one line, before "
                                  "training) or index (block order decides; the run is tagged ties)")


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
                                      "python -m lottery sweep: one role=sweep run per sweep and profile)",
                                execution=True)
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
    train: TrainConfig = group(TrainConfig, "the training recipe (docs/design.md §5)")
    optim: OptimConfig = group(OptimConfig, "the recipe's optimizer")
    schedule: ScheduleConfig = group(ScheduleConfig, "the recipe's learning-rate schedule")
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


# --------------------------------------------------------------------------------------------
# Registries: the kinds of one concept, each with its own settings


class Registry(Generic[T]):
    """The kinds of one concept by name: what ``--help``, validation, the search space and the
    sweeps read, so no list of choices is written twice. ``group``: the config group whose
    options the kinds are, under which a kind's own settings (a dataclass extending that group's
    schema) are stored with Hydra as ``schema/<group>/<name>``."""

    every: ClassVar[list["Registry"]] = []

    def __init__(self, kind: str, group: str | None = None, base: type | None = None, key: str = "name"):
        self.kind, self.group, self.base = kind, group, base  # base: the group's schema, which settings extend
        self.key = key  # the group's key that names the kind
        self._items: dict[str, T] = {}
        self.settings: dict[str, type] = {}
        Registry.every.append(self)

    def add(self, name: str, item: T, settings: type | None = None) -> T:
        if self._items.get(name, item) is not item:
            raise ValueError(f"two {self.kind} kinds are both named {name}")
        if settings is not None:
            _declared(self, name, settings)
        self._items[name] = item
        if settings is not None:
            self.settings[name] = settings
            ConfigStore.instance().store(group=f"schema/{self.group}", name=name, node=settings)
        return item

    def registered(self, settings: type | None = None):
        """Class decorator: one instance of the class under its ``name``, with its own settings."""

        def wrap(cls):
            self.add(cls.name, cls(), settings)
            return cls

        return wrap

    def settings_of(self, name: str) -> type:
        """The settings class of a kind: its own, else the group's schema."""
        return self.settings.get(name, self.base)

    def check_config(self, node) -> None:
        """A group's composed config holds the settings of the kind it names: a name changed by
        hand (``criterion.name=pls`` on GraSP's settings) is one line, not a missing key later."""
        name = node[self.key]
        self[name]  # a known kind, or one line naming them
        held = OmegaConf.get_type(node)
        if held is not self.settings_of(name):
            chosen = next((n for n, s in self.settings.items() if s is held), "another kind")
            raise LotteryError(f"{self.group}.{self.key}={name} does not match the {self.group} config chosen, which "
                               f"holds {chosen}'s settings: choose the {self.group} with {self.group}=NAME (a file "
                               f"of conf/{self.group}/; python -m lottery --help lists them)")

    def __getitem__(self, name: str) -> T:
        check_choice(self.kind, name, self._items)
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()


def _declared(registry: "Registry", name: str, settings: type) -> None:
    """A kind's settings extend its group's schema and declare every field with ``opt()``: the help,
    the identity and the search space read a field's help and whether it is an execution setting,
    so a bare field is refused here, when the kind registers, not later in ``--help``."""
    if registry.base is None or not (isinstance(settings, type) and issubclass(settings, registry.base)
                                     and dataclasses.is_dataclass(settings)):
        raise TypeError(f"{registry.kind} {name}: its settings {getattr(settings, '__name__', settings)!r} must be a "
                        f"@dataclass extending {getattr(registry.base, '__name__', 'its group schema')}")
    for path, f in schema_fields(settings):
        if "execution" not in f.metadata:
            raise TypeError(f"{registry.kind} {name}: setting {path} of {settings.__name__} is declared without opt(); "
                            f"write `{f.name}: TYPE = opt(DEFAULT, \"what it does\")`")


def import_kinds(package: str, path) -> None:
    """Import every module of a package of kinds (``import_kinds(__name__, __path__)`` in its
    ``__init__``): each registers itself, so adding a kind is its own module and nothing else."""
    for found in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{found.name}")


def register() -> None:
    """Store the trial schema with Hydra; each kind's own settings are stored by
    its registry when its module is imported (every entry point imports them all)."""
    ConfigStore.instance().store(name="trial_schema", node=TrialConfig)


def epochs_at(*fractions: float, _root_) -> list[int]:
    """``${lottery.epochs_at:0.5,0.75}``: the epochs at these fractions of ``train.epochs`` (floored;
    0 and the end left out): a default that fits every profile's budget ([100, 150] of 200, [4, 6] of 8)."""
    epochs = int(_root_.train.epochs)
    return sorted({e for e in (int(f * epochs + 1e-9) for f in fractions) if 0 < e < epochs})


OmegaConf.register_new_resolver("lottery.epochs_at", epochs_at, replace=True)  # the schema's defaults use it


def schema_fields(cls=TrialConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every leaf field of a schema as (dotted path, field)."""
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):  # a group of fields
            yield from schema_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def kind_fields() -> Iterator[tuple[str, str, dataclasses.Field]]:
    """Every field a kind declares beyond its group's schema or with a default of its own, as
    (dotted path, kind, field)."""
    base = dict(schema_fields())
    for registry in Registry.every:
        for name, settings in registry.settings.items():
            for path, f in schema_fields(settings, f"{registry.group}."):
                if path not in base or f.default != base[path].default:
                    yield path, name, f


def help_of(path: str) -> str:
    """The help of a dotted config path (empty when it has none)."""
    found = [f.metadata.get("help", "") for p, f in schema_fields() if p == path]
    found += [f.metadata.get("help", "") for p, _, f in kind_fields() if p == path]
    return found[0] if found else ""


def bad_value(path: str, value, rule: str) -> LotteryError:
    """``path=value: rule``, followed by the field's own help, so the fix is in the message."""
    about = help_of(path)
    rule = rule if rule.startswith(" ") else f": {rule}"  # " is above ..." reads on from the value
    return LotteryError(f"{path}={value}{rule}" + (f" ({path}: {about})" if about else ""))
