"""scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): 1,797 real 8x8 grayscale
images of 10 classes that ship with scikit-learn, so nothing is downloaded. A real data set for
wiring, tests and quick checks, not the paper's benchmark (docs/design.md §9): at 32x32 (upscaled,
the gray replicated to RGB) every family reads it; ``data.image_size=8`` keeps its native 8x8
gray pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lottery.config import DataConfig, bad_value, opt
from lottery.training.sources.base import IMAGE_SIZE, SOURCES, Arrays, Source
from lottery.training.tasks.base import SUBSET_SEED, balanced_indices

TEST_IMAGES = 360  # the fixed, class-balanced test split (36 per class); the other 1,437 train
SIZES = (8, IMAGE_SIZE)


@dataclass
class DigitsSettings(DataConfig):
    image_size: int = opt(IMAGE_SIZE, "32: upscaled (bilinear) to 32x32 RGB, as every family reads; 8: the native 8x8 "
                                      "gray pixels")


def _pixels(cfg: DigitsSettings) -> tuple[np.ndarray, np.ndarray]:
    """Every image as uint8 NHWC at the configured size, and the labels."""
    from sklearn.datasets import load_digits  # scikit-learn takes a second to import: only when digits load

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)  # (N, 1, 8, 8), 0..255
    if cfg.image_size != 8:
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1)
    x = x.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return x, digits.target.astype(np.int64)


@SOURCES.registered(DigitsSettings)
class Digits(Source):
    name = "digits"

    def check(self, cfg: DigitsSettings) -> None:
        if cfg.image_size not in SIZES:
            raise bad_value("data.image_size", cfg.image_size, f"give one of {', '.join(map(str, SIZES))}")

    def load(self, cfg: DigitsSettings) -> Arrays:
        x, y = _pixels(cfg)
        test = balanced_indices(y, TEST_IMAGES, SUBSET_SEED)
        train = np.setdiff1d(np.arange(len(y)), test)
        return Arrays(x[train], y[train], x[test], y[test], [str(c) for c in range(10)])

    def fingerprint(self, cfg: DigitsSettings) -> str:
        return f"digits-sklearn-v1-{cfg.image_size}px"

    def splits(self, cfg: DigitsSettings) -> tuple[int, int]:
        return 1797 - TEST_IMAGES, TEST_IMAGES

    def classes(self, cfg: DigitsSettings) -> int:
        return 10

    def shape(self, cfg: DigitsSettings) -> tuple[int, int, int]:
        return (1, 8, 8) if cfg.image_size == 8 else (3, cfg.image_size, cfg.image_size)
