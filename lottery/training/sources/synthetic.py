"""Deterministic, learnable class patterns plus noise, of any size: for tests and wiring checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lottery.config import DataConfig, bad_value, opt
from lottery.training.sources.base import IMAGE_SIZE, SOURCES, Arrays, Source


@dataclass
class SyntheticSettings(DataConfig):
    num_classes: int = opt(10, "classes of the generated images")


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


def _sizes(cfg: SyntheticSettings) -> tuple[int, int, int]:
    """The whole synthetic set: the subset sizes plus the held-out validation images."""
    return (cfg.train_size or 5000) + (cfg.val_size or 0), cfg.test_size or 1000, cfg.num_classes


@SOURCES.registered(SyntheticSettings)
class Synthetic(Source):
    name = "synthetic"

    def check(self, cfg: SyntheticSettings) -> None:
        if cfg.num_classes < 2:
            raise bad_value("data.num_classes", cfg.num_classes, "must be at least 2")

    def load(self, cfg: SyntheticSettings) -> Arrays:
        return synthetic_arrays(*_sizes(cfg))

    def fingerprint(self, cfg: SyntheticSettings) -> str:
        return "synthetic-v1-{}-{}-{}".format(*_sizes(cfg))

    def splits(self, cfg: SyntheticSettings) -> tuple[int, int]:
        return _sizes(cfg)[:2]

    def classes(self, cfg: SyntheticSettings) -> int:
        return cfg.num_classes

    def released_sets(self, cfg: SyntheticSettings) -> bool:
        """Its 10 classes of 32x32 colour images stand in for CIFAR-10 where tests and wiring checks
        run the released-set readers (the sets' labels are CIFAR-10's 10 classes)."""
        return cfg.num_classes == 10
