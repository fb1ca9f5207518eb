"""Any folder of ``root/train/<class>/*`` and ``root/test/<class>/*`` images, decoded once (resized
to the data module's image size where they differ) and cached under ``data.cache``."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from lottery.config import DataConfig, opt
from lottery.errors import LotteryError
from lottery.files import atomic
from lottery.training.sources.base import IMAGE_SIZE, SOURCES, Arrays, Source


@dataclass
class ImageFolderSettings(DataConfig):
    root: Optional[str] = opt(None, "DIR with DIR/train/<class>/* and DIR/test/<class>/*", execution=True)
    cifar10: bool = opt(False, "the folder holds CIFAR-10 (its 10 classes, its test split): the released CIFAR-10-C "
                               "and CIFAR-10.2 sets apply (robustness.cifar10c_root, cifar102_path)", execution=True)


def _image_files(root: Path, split: str) -> list[tuple[str, Path]]:
    split_dir = root / split
    files = []
    for cls in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        files += [(cls.name, f) for f in sorted(cls.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return files


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for truncated or foreign files
        raise LotteryError(f"cannot decode image {path} ({type(e).__name__}); remove or replace the file") from None


def _folder_listing(cfg: ImageFolderSettings) -> tuple[dict[str, list[tuple[str, Path]]], str]:
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


@SOURCES.registered(ImageFolderSettings)
class ImageFolder(Source):
    name = "imagefolder"

    def check(self, cfg: ImageFolderSettings) -> None:
        if OmegaConf.is_missing(cfg, "root") or not cfg.root:
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

    def load(self, cfg: ImageFolderSettings) -> Arrays:
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

    def fingerprint(self, cfg: ImageFolderSettings) -> str:
        return _folder_listing(cfg)[1]

    def splits(self, cfg: ImageFolderSettings) -> tuple[int, int]:
        listing = _folder_listing(cfg)[0]
        return len(listing["train"]), len(listing["test"])

    def classes(self, cfg: ImageFolderSettings) -> int:
        return len({c for c, _ in _folder_listing(cfg)[0]["train"]})

    def released_sets(self, cfg: ImageFolderSettings) -> bool:
        return cfg.cifar10  # the user's word: a folder's images could be anything
