"""The contract of a task (what a trial trains and measures, chosen by its data source:
docs/design.md §9.1), the ``TASKS`` registry, and the helpers tasks and their consumers share:
the loss over predicted units, the class-balanced subset rule and its seed, and the paired t-test.

A task says what a network's output means against its targets: the training loss, the units an
accuracy counts (images, or next tokens), what the test split keeps of each example for the
paired comparison of a ticket with its dense network on the same examples, and that comparison
itself. It also says how raw examples become network inputs, which subset rule draws examples
and whether the image corruptions apply. The pipeline, the trainer, the criteria and the tables
ask the task; none names one.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from lottery.config import Registry
from lottery.errors import LotteryError

CONFIDENCE = 0.95  # of every interval lottery reports (over seeds, and a language model's paired loss difference)
SUBSET_SEED = 0  # the subset is part of the data's identity, the same for every trial seed
SUBSET_RULE = 2  # version of the subset rules (the tasks' ``indices``): part of the data's identity


def unit_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every predicted unit: an image's class (out (N, C), y (N,)), each
    position's next token (out (N, T, V), y (N, T)); the same call either way."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


class Task(ABC):
    """The contract of a task (one subclass each, registered by name in ``TASKS``)."""

    name: ClassVar[str]
    inputs: ClassVar[str]  # what a network of this task reads: "images" or "tokens" (``networks.Shape.kind``)
    shifted_sets: ClassVar[bool]  # the image corruptions (and CIFAR-10.2) can apply at all
    test: ClassVar[str]  # the paired test of a ticket against its dense network, for messages and tables
    balanced: ClassVar[bool]  # subsets hold every class alike (examples have one class each)
    augments: ClassVar[bool]  # train.augment's crops and flips apply

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch's units (``unit_cross_entropy``)."""
        return unit_cross_entropy(out, y)

    @abstractmethod
    def log_probs(self, out: torch.Tensor) -> torch.Tensor:
        """The output as log-probabilities, classes on the last dimension, in float64."""

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correctly predicted units of the batch (a device tensor: the epoch reads it once)."""
        return (out.argmax(-1) == y).sum()

    def units(self, y: torch.Tensor) -> int:
        return y.numel()

    @abstractmethod
    def outcome(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the test split keeps of each example for the paired comparison (CPU)."""

    @abstractmethod
    def accuracy(self, outcomes: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy (%) over the split's units."""

    def summary(self, outcomes: torch.Tensor, y: torch.Tensor) -> dict:
        """The split's numbers beyond accuracy (a language model's loss and perplexity)."""
        return {}

    @abstractmethod
    def paired(self, ticket: torch.Tensor, dense: torch.Tensor, y: torch.Tensor) -> dict:
        """The ticket against its dense network on the same examples: ``p_value`` of the task's
        paired test, and the counts or interval it rests on."""

    @abstractmethod
    def indices(self, y: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` examples of a split (its targets ``y``) by the task's subset rule."""

    @abstractmethod
    def prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """Raw examples as the network reads them."""

    @abstractmethod
    def tensors(self, x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A source's arrays (``lottery.training.sources.base.Arrays``) as a split's device-resident (x, y)."""

    @abstractmethod
    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``prepare`` normalises with, from the training split."""

    @abstractmethod
    def resident_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes one example of this shape holds on the device (inputs and targets)."""


TASKS: Registry[Task] = Registry("task")


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The one class-balanced subset rule: ``n`` indices, class-balanced and class-interleaved.

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


def paired_t(d) -> tuple[float, float, float | None, float | None]:
    """Mean of paired differences (or of per-seed deltas), the two-sided p of a t-test of mean 0
    and its 95 % Student-t interval (None with fewer than two values, whose p is 1: one value is
    no evidence)."""
    from scipy import stats

    d = [float(v) for v in d]
    mean, n = statistics.fmean(d), len(d)
    if n < 2:
        return mean, 1.0, None, None
    sd = statistics.stdev(d)
    if sd == 0.0:  # every value alike: no difference at all, or a constant one
        return mean, (1.0 if mean == 0 else 0.0), mean, mean
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return mean, float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)), mean - half, mean + half
