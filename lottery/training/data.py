"""A data config's data: checked, identified and sized without loading (``check``,
``fingerprint``, ``shape_of``, ``images``), and loaded whole onto the training device as a
``Dataset`` (uint8 images (N, C, H, W) plus int64 labels, or windows of T + 1 token ids, uint8 for
bytes, whose first T are the inputs and last T the next tokens: two views of one array), with
every subset drawn by its task's subset rule. What a source is: ``lottery.training.sources.base``;
what the data means: its task (``lottery.training.tasks``); how it is batched and augmented per
epoch: ``lottery.training.batches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from lottery.config import DataConfig, bad_value
from lottery.errors import LotteryError
from lottery.files import content_key
from lottery.networks import Shape
from lottery.training.sources.base import SOURCES
from lottery.training.tasks.base import SUBSET_RULE, SUBSET_SEED, TASKS, Task


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, H, W) images, or (N, T) token ids (uint8 for bytes: ``LanguageModeling.tensors``)
    y: torch.Tensor  # int64 (N,) labels, or (N, T) next tokens (a loaded split: a view of the inputs' windows)

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
    source: str = ""  # the source's name (``data.name``): what corruptions regenerated on its test split are named by

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Shape:
        """What the data fixes about a network: its input shape, class count and input kind."""
        return Shape(tuple(self.train.x.shape[1:]), self.num_classes, self.task.inputs)

    def normalize(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        """Raw examples as the network reads them (images normalised; token ids as int64)."""
        return self.task.prepare(x, self.mean, self.std, channels_last)

    @staticmethod
    def targets(y: torch.Tensor) -> torch.Tensor:
        """A batch's targets as the loss reads them: int64 (token ids are resident narrower)."""
        return y.long()

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
# Subsets and placement


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
    return Dataset(train, test, arrays.classes, mean, std, fingerprint(cfg), val, task, cfg.name)


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
