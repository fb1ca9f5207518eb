"""Image classification data held whole on the training device, augmented there per batch, and
the contract of a data source (its kinds: ``lottery.training.sources``).

Each split is one uint8 tensor (N, 3, 32, 32) plus int64 labels. Augmentation (4-pixel pad,
random 32x32 crop, horizontal flip) and normalisation run batched on the device from a
per-epoch seeded generator: no per-image PIL work in the loop, and an epoch's order and crops
depend only on (seed, epoch), so a resumed run sees exactly the data an uninterrupted one would.
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

IMAGE_SIZE = 32
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # what sources yield unless they say otherwise (folders are resized)
CIFAR = Shape(IMAGE_SHAPE, 10)  # what CIFAR-10 fixes about a network
PAD = 4
SUBSET_SEED = 0  # the subset is part of the data's identity, the same for every trial seed
SUBSET_RULE = 2  # version of ``balanced_indices``: part of the data's identity


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, H, W)
    y: torch.Tensor  # int64 (N,)

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> Shape:
        """What the data fixes about a network: its input shape and class count."""
        return Shape(tuple(self.train.x.shape[1:]), self.num_classes)

    def normalize(self, x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        x = (x.float().div_(255) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass
class Arrays:
    """What a source returns: NHWC uint8 images, labels and class names (its content identity is
    ``Source.fingerprint``, known without loading)."""

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

    def shape(self, cfg: DataConfig) -> tuple[int, int, int]:
        """(C, H, W) of one image: CIFAR's 3 x 32 x 32 unless the source says otherwise."""
        return IMAGE_SHAPE


SOURCES: Registry[Source] = Registry("data set", group="data", base=DataConfig)


def check(cfg: DataConfig) -> None:
    """A known source, its own checks, and subsets of at least one image per class that their
    splits can fill."""
    src = SOURCES[cfg.name]
    src.check(cfg)
    classes = src.classes(cfg)
    if classes < 2:
        raise LotteryError(f"data {cfg.name} has {classes} class: a classifier needs at least 2 classes")
    for key in ("train_size", "test_size", "val_size"):
        size = getattr(cfg, key)
        if size is not None and size < classes:
            raise bad_value(f"data.{key}", size, "need at least one image per class")
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
    per_image = int(np.prod(SOURCES[cfg.name].shape(cfg)))
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
    """The network shape a data config implies (input and classes), without loading any image."""
    return Shape(SOURCES[cfg.name].shape(cfg), SOURCES[cfg.name].classes(cfg))


def train_images(cfg: DataConfig) -> int:
    """How many images a trial trains on (its subset, else the split less the validation images)."""
    return cfg.train_size or SOURCES[cfg.name].splits(cfg)[0] - (cfg.val_size or 0)


# --------------------------------------------------------------------------------------------
# Subsets, placement, batches


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The one subset rule: ``n`` indices, class-balanced and class-interleaved.

    Each class's indices are drawn in a seeded order and the classes taken in turn (one of each,
    then the next of each, ...), so the subset and every prefix or chunk of it hold each class
    within +-1 of the others, even when the split is stored class by class. A class with fewer
    images than its share gives them all, and the others share the rest (a split whose classes
    differ in size, taken whole).
    """
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    have = [int((labels == c).sum()) for c in classes]
    if n > sum(have):
        raise LotteryError(f"asked for {n} images, the split has {sum(have)}")
    per_class, left = [0] * len(classes), n
    while left:  # equal shares, the first classes taking the one more; a full class's rest goes round again
        room = [i for i in range(len(classes)) if per_class[i] < have[i]]
        share, extra = divmod(left, len(room))
        for j, i in enumerate(room):
            take = min(have[i] - per_class[i], share + (j < extra))
            per_class[i] += take
            left -= take
    drawn = []
    for c, k in zip(classes, per_class):
        drawn.append(rng.permutation(np.flatnonzero(labels == c))[:k])
    rounds = [[d[r] for d in drawn if r < len(d)] for r in range(max(per_class))]
    return np.asarray([i for r in rounds for i in r], dtype=np.int64)


def subset(split: Split, n: int | None, seed: int = SUBSET_SEED) -> Split:
    """``n`` images of a split by the subset rule (the whole split, interleaved, when ``n`` is None
    or covers it); every consumer takes its images here, so dense and ticket see the same ones."""
    labels = split.y.cpu().numpy()
    n = len(labels) if n is None else min(n, len(labels))
    idx = torch.from_numpy(balanced_indices(labels, n, seed)).to(split.y.device)
    return Split(split.x[idx], split.y[idx])


def _to_split(x: np.ndarray, y: np.ndarray, size, device) -> Split:
    if size is not None and size > len(y):
        raise LotteryError(f"asked for {size} images, the split has only {len(y)}")
    keep = balanced_indices(y, len(y) if size is None else size, SUBSET_SEED)
    xt = torch.from_numpy(np.ascontiguousarray(x[keep].transpose(0, 3, 1, 2)))
    return Split(xt.to(device), torch.from_numpy(np.asarray(y[keep], np.int64)).to(device))


def _hold_out(x: np.ndarray, y: np.ndarray, val_size: int | None):
    """(train, validation) arrays: a class-balanced validation split taken from the training images."""
    if not val_size:
        return (x, y), None
    if val_size >= len(y):
        raise LotteryError(f"data.val_size={val_size} leaves no training images (the split has {len(y)})")
    val = balanced_indices(y, val_size, SUBSET_SEED + 1)
    rest = np.setdiff1d(np.arange(len(y)), val)
    return (x[rest], y[rest]), (x[val], y[val])


def load_dataset(cfg: DataConfig, device: torch.device) -> Dataset:
    arrays = SOURCES[cfg.name].load(cfg)
    (train_x, train_y), val = _hold_out(arrays.train_x, arrays.train_y, cfg.val_size)
    train = _to_split(train_x, train_y, cfg.train_size, device)
    test = _to_split(arrays.test_x, arrays.test_y, cfg.test_size, device)
    val = _to_split(*val, None, device) if val is not None else None
    channels = train.x.shape[1]
    sums = torch.zeros(channels, dtype=torch.float64, device=device)
    squares = torch.zeros(channels, dtype=torch.float64, device=device)
    for chunk in train.x.split(4096):
        v = chunk.double().div(255)
        sums += v.sum((0, 2, 3))
        squares += v.pow(2).sum((0, 2, 3))
    count = train.x.shape[0] * train.x.shape[2] * train.x.shape[3]
    mean = sums / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return Dataset(train, test, arrays.classes, mean.float().view(1, channels, 1, 1),
                   std.float().view(1, channels, 1, 1), fingerprint(cfg), val)


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
    """Whether the recipe drops an epoch's last partial batch: a compiled step or a captured CUDA
    graph trains on one static batch shape (dense and ticket alike: the choice is the recipe's)."""
    return bool(t.compile or t.cuda_graph)


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
    if t.augment:
        x = crop_flip(x, offsets, flips)
    return data.normalize(x, t.channels_last), data.train.y[idx]


def eval_batches(data: Dataset, split: Split, batch_size: int, channels_last: bool = True):
    for start in range(0, len(split), batch_size):
        yield data.normalize(split.x[start:start + batch_size], channels_last), split.y[start:start + batch_size]


def num_batches(n: int, t: TrainConfig) -> int:
    full, rest = divmod(n, t.batch_size)
    return full + (rest >= 2 and not drops_last(t))


def scoring_set(data: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced, unaugmented, normalised sample of the training split (seeded); every
    chunk of it holds every class."""
    chosen = subset(data.train, size, seed)
    return data.normalize(chosen.x), chosen.y
