"""Image classification data held whole on the training device, augmented there per batch.

Each split is one uint8 tensor (N, 3, 32, 32) plus int64 labels. Augmentation (4-pixel pad,
random 32x32 crop, horizontal flip) and normalisation run batched on the device from a
per-epoch seeded generator: no per-image PIL work in the loop, and an epoch's order and crops
depend only on (seed, epoch), so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lottery.errors import LotteryError, bad_value, check_choice, one_line
from lottery.files import atomic
from lottery.models import Shape
from lottery.store import content_key

IMAGE_SIZE = 32
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # every source yields RGB images of this size (folders are resized)
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


@dataclass(frozen=True)
class Source:
    check: Callable  # cfg -> None, raises LotteryError early (before any work)
    load: Callable  # cfg -> Arrays
    fingerprint: Callable  # cfg -> str: the source's content identity, without decoding images
    splits: Callable  # cfg -> (train, test): images in the whole splits, without decoding them
    classes: Callable  # cfg -> int: the class count, without decoding images


# --------------------------------------------------------------------------------------------
# Sources


def _cifar10_root(cfg) -> Path:
    return Path(cfg.root).expanduser()


def _check_cifar10(cfg) -> None:
    pass  # whether the files exist or can be downloaded is only known by trying


def _load_cifar10(cfg) -> Arrays:
    from torchvision.datasets import CIFAR10

    root = _cifar10_root(cfg)
    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        test = CIFAR10(str(root), train=False, download=cfg.download)
    except Exception as e:  # missing files, no network, corrupt archive
        raise LotteryError(
            f"CIFAR-10 is not under {root} and could not be downloaded ({one_line(e)}); offline, use data=imagefolder "
            "data.root=DIR with DIR/train/<class>/* and DIR/test/<class>/*"
        ) from None
    return Arrays(
        train.data, np.asarray(train.targets, np.int64), test.data,
        np.asarray(test.targets, np.int64), list(train.classes),
    )


def _cifar10_fingerprint(cfg) -> str:
    return "cifar10-torchvision"


def _image_files(root: Path, split: str) -> list[tuple[str, Path]]:
    split_dir = root / split
    files = []
    for cls in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files += [(cls.name, f) for f in sorted(cls.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return files


def _check_imagefolder(cfg) -> None:
    if not cfg.root:
        raise LotteryError("data=imagefolder needs data.root=DIR (DIR/train/<class>/*, DIR/test/<class>/*)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise LotteryError(f"data.root={cfg.root} does not exist; point it at a folder with train/ and test/")
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise LotteryError(f"{d} is missing or has no class folders; expected {split}/<class>/<image>")
        if not any(f.is_file() for c in d.iterdir() if c.is_dir() for f in c.iterdir()):
            raise LotteryError(f"{d} has class folders but no images in them")


def _decode(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for truncated or foreign files
        raise LotteryError(f"cannot decode image {path} ({type(e).__name__}); remove or replace the file") from None


def _folder_listing(cfg) -> tuple[dict[str, list[tuple[str, Path]]], str]:
    """The folder's images per split, and its content fingerprint (names and sizes)."""
    return _listing(str(Path(cfg.root).expanduser().resolve()))


@functools.lru_cache(maxsize=4)
def _listing(root: str) -> tuple[dict[str, list[tuple[str, Path]]], str]:
    """Listed once per process (about 1 s for CIFAR-10's 60,000 files): a sweep's trials share it."""
    listing = {s: _image_files(Path(root), s) for s in ("train", "test")}
    digest = hashlib.sha256()
    for split, files in listing.items():
        for cls, f in files:
            digest.update(f"{split}/{cls}/{f.name}:{f.stat().st_size}\n".encode())
    return listing, "imagefolder-" + digest.hexdigest()[:20]


def _load_imagefolder(cfg) -> Arrays:
    root = Path(cfg.root).expanduser()
    listing, fingerprint = _folder_listing(cfg)
    classes = sorted({c for c, _ in listing["train"]})
    unknown = sorted({c for c, _ in listing["test"]} - set(classes))
    if unknown:
        raise LotteryError(f"{root}/test has classes {unknown} that train/ lacks")
    cache = Path(cfg.cache).expanduser() / f"{fingerprint}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Arrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"], list(z["classes"]))
        except Exception as e:
            print(f"lottery: ignoring unreadable data cache {cache} ({e}); decoding again")
    from tqdm import tqdm

    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for split, files in listing.items():
            images = list(tqdm(pool.map(_decode, [f for _, f in files], chunksize=256),
                               total=len(files), desc=f"decode {split}", unit="img", leave=False,
                               disable=not sys.stderr.isatty()))
            arrays[split] = (np.stack(images), np.array([index[c] for c, _ in files], np.int64))
    out = Arrays(*arrays["train"], *arrays["test"], classes)
    with atomic(cache) as tmp:
        np.savez(tmp, train_x=out.train_x, train_y=out.train_y, test_x=out.test_x,
                 test_y=out.test_y, classes=np.array(classes))
    return out


def _check_synthetic(cfg) -> None:
    if cfg.num_classes < 2:
        raise LotteryError("data.num_classes must be at least 2")


def synthetic_arrays(train_size: int, test_size: int, num_classes: int) -> Arrays:
    """Learnable images: a smooth colour pattern per class, slightly shifted, plus noise."""
    rng = np.random.default_rng(1234)
    coarse = torch.from_numpy(rng.normal(size=(num_classes, 3, 3, 3)).astype(np.float32))
    patterns = F.interpolate(coarse, size=(IMAGE_SIZE + 4, IMAGE_SIZE + 4), mode="bilinear").numpy()

    def split(n):
        y = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(y)
        dx, dy = rng.integers(0, 5, size=(2, n))
        out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for start in range(0, n, 4096):  # in chunks: the float temporaries stay small
            part = slice(start, start + 4096)
            x = np.stack([patterns[c, :, a:a + IMAGE_SIZE, b:b + IMAGE_SIZE]
                          for c, a, b in zip(y[part], dy[part], dx[part])])
            x = 128 + 50 * x + rng.normal(scale=50, size=x.shape)
            out[part] = np.clip(x, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return out, y

    tx, ty = split(train_size)
    vx, vy = split(test_size)
    return Arrays(tx, ty, vx, vy, [f"class{i}" for i in range(num_classes)])


def _synthetic_id(train_size: int, test_size: int, num_classes: int) -> str:
    return f"synthetic-v1-{train_size}-{test_size}-{num_classes}"


def _synthetic_sizes(cfg) -> tuple[int, int, int]:
    """The whole synthetic set: the subset sizes plus the held-out validation images."""
    return (cfg.train_size or 5000) + (cfg.val_size or 0), cfg.test_size or 1000, cfg.num_classes


def _load_synthetic(cfg) -> Arrays:
    return synthetic_arrays(*_synthetic_sizes(cfg))


def check(cfg) -> None:
    """A known source, subsets of at least one image per class that their splits can fill, and
    the source's own checks."""
    check_choice("data set", cfg.name, SOURCES)
    for key in ("train_size", "test_size", "val_size"):
        size = getattr(cfg, key)
        if size is not None and size < cfg.num_classes:
            raise bad_value(f"data.{key}", size, "need at least one image per class")
    source = SOURCES[cfg.name]
    source.check(cfg)
    train, test = source.splits(cfg)
    if (cfg.train_size or 0) + (cfg.val_size or 0) > train:
        what = "data.train_size" + (f" + data.val_size = {cfg.train_size or 0} + {cfg.val_size}" if cfg.val_size else
                                    f"={cfg.train_size}")
        raise LotteryError(f"{what} exceeds the training split of {cfg.name}: {train} images")
    if (cfg.test_size or 0) > test:
        raise bad_value("data.test_size", cfg.test_size, f"exceeds the test split of {cfg.name}: {test} images")


def images(cfg) -> int:
    """How many images a data config holds in memory: its subsets, else its whole splits."""
    train, test = SOURCES[cfg.name].splits(cfg)
    return (cfg.train_size or train) + (cfg.val_size or 0) + (cfg.test_size or test)


def check_memory(cfg, device: torch.device) -> None:
    """The data fits comfortably: its arrays (decoded, subset and moved: about three uint8 copies
    at once) within half the available RAM, and the resident splits within half the free memory
    of a CUDA device. Said in one line before anything is allocated."""
    import psutil

    per_image = int(np.prod(IMAGE_SHAPE))
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


SOURCES: dict[str, Source] = {
    "cifar10": Source(_check_cifar10, _load_cifar10, _cifar10_fingerprint, lambda cfg: (50_000, 10_000),
                      lambda cfg: 10),
    "imagefolder": Source(_check_imagefolder, _load_imagefolder, lambda cfg: _folder_listing(cfg)[1],
                          lambda cfg: tuple(len(_folder_listing(cfg)[0][s]) for s in ("train", "test")),
                          lambda cfg: len({c for c, _ in _folder_listing(cfg)[0]["train"]})),
    "synthetic": Source(_check_synthetic, _load_synthetic, lambda cfg: _synthetic_id(*_synthetic_sizes(cfg)),
                        lambda cfg: _synthetic_sizes(cfg)[:2], lambda cfg: cfg.num_classes),
}


def shape_of(cfg) -> Shape:
    """The network shape a data config implies (input and classes), without loading any image."""
    return Shape(IMAGE_SHAPE, SOURCES[cfg.name].classes(cfg))


def train_images(cfg) -> int:
    """How many images a trial trains on (its subset, else the split less the validation images)."""
    return cfg.train_size or SOURCES[cfg.name].splits(cfg)[0] - (cfg.val_size or 0)


# --------------------------------------------------------------------------------------------
# Subsets, placement, batches


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The one subset rule: ``n`` indices, class-balanced and class-interleaved.

    Each class's indices are drawn in a seeded order and the classes taken in turn (one of each,
    then the next of each, ...), so the subset and every prefix or chunk of it hold each class
    within +-1 of the others, even when the split is stored class by class.
    """
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    drawn = []
    for c, k in zip(classes, per_class):
        idx = np.flatnonzero(labels == c)
        if k > len(idx):
            raise LotteryError(f"asked for {k} images of class {c}, the split has {len(idx)}")
        drawn.append(rng.permutation(idx)[:k])
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


def load_dataset(cfg, device: torch.device) -> Dataset:
    arrays = SOURCES[cfg.name].load(cfg)
    (train_x, train_y), val = _hold_out(arrays.train_x, arrays.train_y, cfg.val_size)
    train = _to_split(train_x, train_y, cfg.train_size, device)
    test = _to_split(arrays.test_x, arrays.test_y, cfg.test_size, device)
    val = _to_split(*val, None, device) if val is not None else None
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    squares = torch.zeros(3, dtype=torch.float64, device=device)
    for chunk in train.x.split(4096):
        v = chunk.double().div(255)
        sums += v.sum((0, 2, 3))
        squares += v.pow(2).sum((0, 2, 3))
    count = train.x.shape[0] * train.x.shape[2] * train.x.shape[3]
    mean = sums / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return Dataset(train, test, arrays.classes, mean.float().view(1, 3, 1, 1),
                   std.float().view(1, 3, 1, 1), _content_id(cfg), val)


def fingerprint(cfg) -> str:
    """The content identity of a data config's splits (source content and subsets), without
    decoding any image: the dense store keys on it, and so does a trial's identity. The config is
    checked first, so a missing folder is a clear error here too (the table builder asks before
    any trial has validated it)."""
    check(cfg)
    return _content_id(cfg)


def _content_id(cfg) -> str:
    source = SOURCES[cfg.name].fingerprint(cfg)
    return f"{source}/subsets-{SUBSET_RULE}/train={cfg.train_size}/test={cfg.test_size}/val={cfg.val_size}"


def digest(fingerprint: str) -> str:
    """A data fingerprint in 16 hex digits: the dataset input's digest and the sweep run's data tag."""
    return content_key({"data": fingerprint})


def describe(cfg, data: Dataset) -> dict:
    """What MLflow records as a run's dataset input: name, content digest, source, sizes."""
    name = cfg.name + (f":{Path(cfg.root).name}" if cfg.root else "")
    return {"name": name, "digest": digest(data.fingerprint),
            "source": {"type": cfg.name, "root": str(Path(cfg.root).resolve()) if cfg.root else None,
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


def drops_last(t) -> bool:
    """Whether the recipe drops an epoch's last partial batch: a compiled step or a captured CUDA
    graph trains on one static batch shape (dense and ticket alike: the choice is the recipe's)."""
    return bool(t.compile or t.cuda_graph)


def epoch_plan(data: Dataset, t, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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


def batch(data: Dataset, t, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor):
    """The augmented, normalised training batch of the given images (gathered on the device)."""
    x = data.train.x[idx]
    if t.augment:
        x = crop_flip(x, offsets, flips)
    return data.normalize(x, t.channels_last), data.train.y[idx]


def eval_batches(data: Dataset, split: Split, batch_size: int, channels_last: bool = True):
    for start in range(0, len(split), batch_size):
        yield data.normalize(split.x[start:start + batch_size], channels_last), split.y[start:start + batch_size]


def num_batches(n: int, t) -> int:
    full, rest = divmod(n, t.batch_size)
    return full + (rest >= 2 and not drops_last(t))


def scoring_set(data: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced, unaugmented, normalised sample of the training split (seeded); every
    chunk of it holds every class."""
    chosen = subset(data.train, size, seed)
    return data.normalize(chosen.x), chosen.y
