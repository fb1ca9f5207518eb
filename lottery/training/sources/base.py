"""The contract of a data source (``Source``), what it returns (``Arrays``) and the ``SOURCES``
registry: one home for what every module of this package implements. ``data=NAME`` picks a source
through its YAML file in ``conf/data/``; its settings (a ``DataConfig`` subclass, under
``@SOURCES.registered(Settings)``) are checked at the door; it is known by its content, sizes and
shape without decoding an example, and loaded as arrays (``lottery.training.data`` makes them a
device-resident ``Dataset``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lottery.config import DataConfig, Registry

IMAGE_SIZE = 32
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # what sources yield unless they say otherwise (folders are resized)


@dataclass
class Arrays:
    """What ``Source.load`` returns: the whole (train, test) splits as host arrays.

    An image source: ``train_x`` / ``test_x`` uint8 (N, H, W, C) images (NHWC, as decoded),
    ``train_y`` / ``test_y`` int64 (N,) labels indexing ``classes`` (the class names). A text
    source: uint8 or int64 (N, T + 1) token windows (a sequence's inputs are its first T, its next
    tokens its last T), an index per window as ``*_y`` (np.arange(N)), and the symbols as
    ``classes``. The training split is whole: ``data.val_size`` examples are held out of it later.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


class Source(ABC):
    """A data source: one subclass per module of ``lottery.training.sources``, registered as
    ``@SOURCES.registered(Settings)`` with ``Settings`` a dataclass extending ``DataConfig``
    (its ``opt`` fields are its ``data.*`` keys). ``cfg`` is always a composed config of those
    settings."""

    name: ClassVar[str]  # what data=... and data.name say
    task: ClassVar[str] = "classification"  # what its data means (``lottery.training.tasks``)

    def check(self, cfg: DataConfig) -> None:
        """Raise ``LotteryError`` (one line) before any work for settings it cannot load."""

    @abstractmethod
    def load(self, cfg: DataConfig) -> Arrays:
        """The whole (train, test) splits as ``Arrays``."""

    @abstractmethod
    def fingerprint(self, cfg: DataConfig) -> str:
        """The content identity of what ``load`` returns, without decoding an example. It must
        change with every setting that changes the data (each non-execution field of its
        settings that ``load`` reads): the dense store keys trained networks on it, so data that
        differ under one fingerprint would reuse a network trained on other data. The subset
        sizes (``train_size`` / ``test_size`` / ``val_size``) are added by the caller."""

    @abstractmethod
    def splits(self, cfg: DataConfig) -> tuple[int, int]:
        """(train, test): the example counts of ``load``'s splits, without decoding them:
        ``len(load(cfg).train_y), len(load(cfg).test_y)``. The training count is the whole
        training split, the ``data.val_size`` examples later held out of it included (a source
        that generates its data to size generates ``train_size + val_size``)."""

    @abstractmethod
    def classes(self, cfg: DataConfig) -> int:
        """The class count (a text source: its symbols), without decoding an example."""

    def shape(self, cfg: DataConfig) -> tuple[int, ...]:
        """One example's shape: (C, H, W) of an image, CIFAR's 3 x 32 x 32 unless the source says
        otherwise; (T,) of a token sequence."""
        return IMAGE_SHAPE

    def released_sets(self, cfg: DataConfig) -> bool:
        """Whether the released CIFAR-10-C and CIFAR-10.2 sets apply (``robustness.cifar10c_root``,
        ``cifar102_path``): its test images are CIFAR-10's, or stand in for them. Where they do not,
        giving one is refused at the door, and the corruptions are regenerated on this source's test
        split and named so (``lottery.measure.robustness``)."""
        return False


SOURCES: Registry[Source] = Registry("data set", group="data", base=DataConfig)
