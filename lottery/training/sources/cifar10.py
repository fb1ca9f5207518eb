"""CIFAR-10 through torchvision's downloader, or a folder where it already lies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lottery.config import DataConfig, opt
from lottery.errors import LotteryError, one_line
from lottery.networks import Shape
from lottery.training.sources.base import IMAGE_SHAPE, SOURCES, Arrays, Source

CIFAR = Shape(IMAGE_SHAPE, 10)  # what CIFAR-10 fixes about a network


@dataclass
class Cifar10Settings(DataConfig):
    root: Optional[str] = opt(None, "download or find CIFAR-10 here (conf: PATHS/data)", execution=True)
    download: bool = opt(True, "download when missing", execution=True)


@SOURCES.registered(Cifar10Settings)
class Cifar10(Source):
    name = "cifar10"

    def load(self, cfg: Cifar10Settings) -> Arrays:
        from torchvision.datasets import CIFAR10  # torchvision takes seconds to import: only when CIFAR-10 loads

        root = Path(cfg.root).expanduser()
        try:
            train = CIFAR10(str(root), train=True, download=cfg.download)
            test = CIFAR10(str(root), train=False, download=cfg.download)
        except Exception as e:  # missing files, no network, corrupt archive
            raise LotteryError(
                f"CIFAR-10 is not under {root} and could not be downloaded ({one_line(e)}); offline, use "
                "data=imagefolder data.root=DIR with DIR/train/<class>/* and DIR/test/<class>/*"
            ) from None
        return Arrays(train.data, np.asarray(train.targets, np.int64), test.data,
                      np.asarray(test.targets, np.int64), list(train.classes))

    def fingerprint(self, cfg: Cifar10Settings) -> str:
        return "cifar10-torchvision"

    def splits(self, cfg: Cifar10Settings) -> tuple[int, int]:
        return 50_000, 10_000

    def classes(self, cfg: Cifar10Settings) -> int:
        return 10

    def released_sets(self, cfg: Cifar10Settings) -> bool:
        return True
