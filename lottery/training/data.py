"""Data held whole on the training device, batched and augmented there, and the contract of a
data source (its kinds: ``lottery.training.sources``); what the data means is its source's task
(``lottery.training.tasks``).

An image split is one uint8 tensor (N, 3, 32, 32) plus int64 labels; a text split int64 token
ids (N, T) plus the next tokens (N, T). Image augmentation (4-pixel pad, random 32x32 crop,
horizontal flip) and normalisation run batched on the device from a per-epoch seeded generator:
no per-image PIL work in the loop, and an epoch's order and crops depend only on (seed, epoch),
so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from lottery.config import DataConfig, Registry, TrainConfig, bad_value
from lottery.errors import LotteryError
from lottery.files import content_key
from lottery.networks import Shape
from lottery.training.tasks import TASKS, Task

IMAGE_SIZE = 32
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # what sources yield unless they say otherwise (folders are resized)
CIFAR = Shape(IMAGE_SHAPE, 10)  # what CIFAR-10 fixes about a network
PAD = 4
SUBSET_SEED = 0  # the subset is part of the data's identity, the same for every trial seed
SUBSET_RULE = 2  # version of the subset rules (``lottery.training.tasks``): part of the data's identity


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, H, W) images, or int64 (N, T) token ids
    y: torch.Tensor  # int64 (N,) labels, or (N, T) next tokens

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]
    mean: torch.Tensor  # (1, 3, 1, 1) float, on the device
    std: torch.Tensor
    fingerprint: str  # identifies the content (source, files, subset) for the dense store
    val: Split | None = None  # held out from the training images (``data.val_size``)
    task: Task = TASKS["classification"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Shape:
        """What the data fixes about a network: its input shape, class count and input kind."""
        return Shape(tuple(self.train.x.shape[1:]), self.num_classes, self.task.inputs)

    def normalize(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        """Raw examples as the network reads them (images normalised; token ids as they are)."""
        return self.task.prepare(x, self.mean, self.std, channels_last)

    def subset(self, split: Split, n: int | None, seed: int = SUBSET_SEED) -> Split:
        """``n`` examples of a split by the task's subset rule (the whole split, in that rule's
        order, when ``n`` is None or covers it); every consumer takes its examples here, so dense
        and ticket see the same ones."""
        labels = split.y.cpu().numpy()
        n = len(labels) if n is None else min(n, len(labels))
        idx = torch.from_numpy(self.task.indices(labels, n, seed)).to(split.y.device)
        return Split(split.x[idx], split.y[idx])

    def accuracy(self, outcomes: torch.Tensor, split: Split | None = None) -> float:
        """Accuracy (%) of a network's outcomes (``trainer.predict``) on the test split (or ``split``)."""
        return self.task.accuracy(outcomes, (split if split is not None else self.test).y)


@dataclass
class Arrays:
    """What a source returns: NHWC uint8 images, labels and class names, or for a text source
    token windows (N, T + 1), an index per window and the symbols (its content
    identity is ``Source.fingerprint``, known without loading)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


class Source:
    """A data source (``data=...`` picks one through its YAML file, one module each in
    ``lottery.training.sources``, under ``@SOURCES.registered(Settings)``): its own settings
    extend ``DataConfig``; it is checked at the
    door, known by its content and sizes without decoding an image, and loaded as arrays."""

    name: ClassVar[str]
    task: ClassVar[str] = "classification"  # what its data means (``lottery.training.tasks``)

    def check(self, cfg: DataConfig) -> None:
        """Raise ``LotteryError`` (one line) before any work for settings it cannot load."""

    def load(self, cfg: DataConfig) -> Arrays:
        raise NotImplementedError

    def fingerprint(self, cfg: DataConfig) -> str:
        """The source's content identity, without decoding images."""
        raise NotImplementedError

    def splits(self, cfg: DataConfig) -> tuple[int, int]:
        """Images in the whole (train, test) splits, without decoding them."""
        raise NotImplementedError

    def classes(self, cfg: DataConfig) -> int:
        """The class count, without decoding images."""
        raise NotImplementedError

    def shape(self, cfg: DataConfig) -> tuple[int, ...]:
        """One example's shape: (C, H, W) of an image, CIFAR's 3 x 32 x 32 unless the source says
        otherwise; (T,) of a token sequence."""
        return IMAGE_SHAPE


SOURCES: Registry[Source] = Registry("data set", group="data", base=DataConfig)


def task_of(cfg: DataConfig) -> Task:
    """The task a data config's source poses."""
    return TASKS[SOURCES[cfg.name].task]


def check(cfg: DataConfig) -> None:
    """A known source, its own checks, and subsets its splits can fill (class-balanced ones with at
    least one image per class)."""
    src = SOURCES[cfg.name]
    src.check(cfg)
    classes, task = src.classes(cfg), task_of(cfg)
    if classes < 2:
        raise LotteryError(f"data {cfg.name} has {classes} class: a classifier needs at least 2 classes")
    least, rule = (classes, "need at least one image per class") if task.balanced else (1, "must be positive")
    for key in ("train_size", "test_size", "val_size"):
        size = getattr(cfg, key)
        if size is not None and size < least:
            raise bad_value(f"data.{key}", size, rule)
    train, test = src.splits(cfg)
    if (cfg.train_size or 0) + (cfg.val_size or 0) > train:
        what = "data.train_size" + (f" + data.val_size = {cfg.train_size or 0} + {cfg.val_size}" if cfg.val_size else
                                    f"={cfg.train_size}")
        raise LotteryError(f"{what} exceeds the training split of {cfg.name}: {train} images")
    if (cfg.test_size or 0) > test:
        raise bad_value("data.test_size", cfg.test_size, f"exceeds the test split of {cfg.name}: {test} images")


def images(cfg: DataConfig) -> int:
    """How many images a data config holds in memory: its subsets, else its whole splits."""
    train, test = SOURCES[cfg.name].splits(cfg)
    return (cfg.train_size or train) + (cfg.val_size or 0) + (cfg.test_size or test)


def check_memory(cfg: DataConfig, device: torch.device) -> None:
    """The data fits comfortably: its arrays (decoded, subset and moved: about three uint8 copies
    at once) within half the available RAM, and the resident splits within half the free memory
    of a CUDA device. Said in one line before anything is allocated."""
    per_image = task_of(cfg).resident_bytes(SOURCES[cfg.name].shape(cfg))
    need, available = 3 * images(cfg) * per_image, psutil.virtual_memory().available
    if need > available / 2:
        raise LotteryError(f"data {cfg.name} with these sizes ({images(cfg)} images) needs about "
                           f"{need / 2**30:.1f} GiB of memory, and this machine has {available / 2**30:.1f} GiB "
                           "available: use smaller data.train_size / test_size / val_size")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        resident = images(cfg) * per_image
        if resident > free / 2:
            raise LotteryError(f"data {cfg.name} ({images(cfg)} images) needs {resident / 2**30:.1f} GiB on {device}, "
                               f"which has {free / 2**30:.1f} GiB free: use smaller data sizes")


def shape_of(cfg: DataConfig) -> Shape:
    """The network shape a data config implies (input, classes, input kind), without loading any example."""
    return Shape(SOURCES[cfg.name].shape(cfg), SOURCES[cfg.name].classes(cfg), task_of(cfg).inputs)


def train_images(cfg: DataConfig) -> int:
    """How many images a trial trains on (its subset, else the split less the validation images)."""
    return cfg.train_size or SOURCES[cfg.name].splits(cfg)[0] - (cfg.val_size or 0)


# --------------------------------------------------------------------------------------------
# Subsets, placement, batches


def _hold_out(task: Task, x: np.ndarray, y: np.ndarray, val_size: int | None):
    """(train, validation) arrays: a validation split (by the task's subset rule) taken from the
    training examples."""
    if not val_size:
        return (x, y), None
    if val_size >= len(y):
        raise LotteryError(f"data.val_size={val_size} leaves no training examples (the split has {len(y)})")
    val = task.indices(y, val_size, SUBSET_SEED + 1)
    rest = np.setdiff1d(np.arange(len(y)), val)
    return (x[rest], y[rest]), (x[val], y[val])


def _to_split(task: Task, x: np.ndarray, y: np.ndarray, size, device) -> Split:
    if size is not None and size > len(y):
        raise LotteryError(f"asked for {size} examples, the split has only {len(y)}")
    keep = task.indices(y, len(y) if size is None else size, SUBSET_SEED)
    return Split(*task.tensors(x[keep], y[keep], device))


def load_dataset(cfg: DataConfig, device: torch.device) -> Dataset:
    task = task_of(cfg)
    arrays = SOURCES[cfg.name].load(cfg)
    (train_x, train_y), val = _hold_out(task, arrays.train_x, arrays.train_y, cfg.val_size)
    train = _to_split(task, train_x, train_y, cfg.train_size, device)
    test = _to_split(task, arrays.test_x, arrays.test_y, cfg.test_size, device)
    val = _to_split(task, *val, None, device) if val is not None else None
    mean, std = task.statistics(train.x)
    return Dataset(train, test, arrays.classes, mean, std, fingerprint(cfg), val, task)


def fingerprint(cfg: DataConfig) -> str:
    """The content identity of a data config's splits (source content and subsets), without
    decoding any image: the dense store keys on it, and so does a trial's identity. Of a checked
    config (``check``)."""
    content = SOURCES[cfg.name].fingerprint(cfg)
    return f"{content}/subsets-{SUBSET_RULE}/train={cfg.train_size}/test={cfg.test_size}/val={cfg.val_size}"


def digest(fingerprint: str) -> str:
    """A data fingerprint in 16 hex digits: the dataset input's digest and the sweep run's data tag."""
    return content_key({"data": fingerprint})


def describe(cfg: DataConfig, data: Dataset) -> dict:
    """What MLflow records as a run's dataset input: name, content digest, source, sizes."""
    root = getattr(cfg, "root", None)  # the sources read from a folder have one
    name = cfg.name + (f":{Path(root).name}" if root else "")
    return {"name": name, "digest": digest(data.fingerprint),
            "source": {"type": cfg.name, "root": str(Path(root).resolve()) if root else None,
                       "fingerprint": data.fingerprint},
            "profile": {"train": len(data.train), "test": len(data.test), "val": len(data.val) if data.val else 0,
                        "classes": data.num_classes}}


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Zero-pad by 4, crop 32x32 at per-image offsets, flip where asked: one gather, batched."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = offsets[:, 0, None] + ar_h
    cols = offsets[:, 1, None] + torch.where(flips[:, None], ar_w.flip(0), ar_w)
    return padded[
        torch.arange(b, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def drops_last(t: TrainConfig) -> bool:
    """Whether the recipe drops an epoch's last partial batch: a captured CUDA graph trains on one
    static batch shape (dense and ticket alike: the choice is the recipe's). A compiled step does
    not: it takes a partial batch eagerly, so compiling never changes what is trained."""
    return bool(t.cuda_graph)


def epoch_plan(data: Dataset, t: TrainConfig, seed: int,
               epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch's batches as (indices, crop offsets, flips) on the data's device: a function of
    (seed, epoch) alone, so a resumed run sees exactly the data an uninterrupted one would."""
    n, size = len(data.train), t.batch_size
    g = epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=g)
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5
    device = data.train.x.device
    perm, offsets, flips = perm.to(device), offsets.to(device), flips.to(device)
    for start in range(0, n, size):
        idx = perm[start:start + size]
        if len(idx) < 2 or (len(idx) < size and drops_last(t)):  # a batch of one cannot train BatchNorm
            break
        yield idx, offsets[start:start + size], flips[start:start + size]


def batch(data: Dataset, t: TrainConfig, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor):
    """The augmented, normalised training batch of the given images (gathered on the device)."""
    x = data.train.x[idx]
    if t.augment and data.task.augments:
        x = crop_flip(x, offsets, flips)
    return data.normalize(x, t.channels_last), data.train.y[idx]


def eval_batches(data: Dataset, split: Split, batch_size: int, channels_last: bool = True):
    for start in range(0, len(split), batch_size):
        yield data.normalize(split.x[start:start + batch_size], channels_last), split.y[start:start + batch_size]


def num_batches(n: int, t: TrainConfig) -> int:
    full, rest = divmod(n, t.batch_size)
    return full + (rest >= 2 and not drops_last(t))


def scoring_set(data: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample of the training split by the task's subset rule (seeded: class-balanced, every
    chunk holding every class, for images), unaugmented, as the network reads it."""
    chosen = data.subset(data.train, size, seed)
    return data.normalize(chosen.x), chosen.y
