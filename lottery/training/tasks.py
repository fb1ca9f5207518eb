"""What a trial trains and measures: its *task*, chosen by the data source (docs/design.md §9.1).

A task says what a network's output means against its targets: the training loss, the units an
accuracy counts (images, or next tokens), what the test split keeps of each example for the
paired comparison of a ticket with its dense network on the same examples, and that comparison
itself (McNemar's exact test on images; for language models paired t-tests on per-sequence
accuracies and losses, the latter with its interval). It also says how raw examples become
network inputs (normalised, augmented images; token ids as they are), which subset rule draws
examples (class-balanced, or seeded draws of sequences, which have no class) and whether the
image-only shifted test sets apply. The pipeline, the trainer, the criteria and the tables ask the task; none names one.
"""

from __future__ import annotations

import math
import statistics
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from lottery.config import Registry
from lottery.errors import LotteryError


def unit_cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every predicted unit: an image's class (out (N, C), y (N,)), each
    position's next token (out (N, T, V), y (N, T)); the same call either way."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


class Task:
    """The contract of a task (one subclass each, registered by name in ``TASKS``)."""

    name: ClassVar[str]
    inputs: ClassVar[str]  # what a network of this task reads: "images" or "tokens" (``networks.Shape.kind``)
    shifted_sets: ClassVar[bool]  # CIFAR-10-C and CIFAR-10.2 apply
    test: ClassVar[str]  # the paired test of a ticket against its dense network, for messages and tables
    balanced: ClassVar[bool]  # subsets hold every class alike (examples have one class each)
    augments: ClassVar[bool]  # train.augment's crops and flips apply

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch's units (``unit_cross_entropy``)."""
        return unit_cross_entropy(out, y)

    def log_probs(self, out: torch.Tensor) -> torch.Tensor:
        """The output as log-probabilities, classes on the last dimension, in float64."""
        raise NotImplementedError

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correctly predicted units of the batch (a device tensor: the epoch reads it once)."""
        return (out.argmax(-1) == y).sum()

    def units(self, y: torch.Tensor) -> int:
        return y.numel()

    def outcome(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the test split keeps of each example for the paired comparison (CPU)."""
        raise NotImplementedError

    def accuracy(self, outcomes: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy (%) over the split's units."""
        raise NotImplementedError

    def summary(self, outcomes: torch.Tensor, y: torch.Tensor) -> dict:
        """The split's numbers beyond accuracy (a language model's loss and perplexity)."""
        return {}

    def paired(self, ticket: torch.Tensor, dense: torch.Tensor, y: torch.Tensor) -> dict:
        """The ticket against its dense network on the same examples: ``p_value`` of the task's
        paired test, and the counts or interval it rests on."""
        raise NotImplementedError

    def indices(self, y: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` examples of a split (its targets ``y``) by the task's subset rule."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """Raw examples as the network reads them."""
        raise NotImplementedError

    def tensors(self, x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A source's arrays (``lottery.training.data.Arrays``) as a split's device-resident (x, y)."""
        raise NotImplementedError

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``prepare`` normalises with, from the training split."""
        raise NotImplementedError

    def resident_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes one example of this shape holds on the device (inputs and targets)."""
        raise NotImplementedError


TASKS: Registry[Task] = Registry("task")
CONFIDENCE = 0.95  # of every interval lottery reports (over seeds, and a language model's paired loss difference)


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


def discordant(ticket: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Images only the ticket gets right, and images only the dense network gets right."""
    ticket_right, dense_right = ticket == labels, dense == labels
    return int((ticket_right & ~dense_right).sum()), int((dense_right & ~ticket_right).sum())


def mcnemar_from(b: int, c: int) -> float:
    """McNemar's exact p (two-sided binomial on the discordant pairs): is one classifier right
    where the other is wrong more often than chance?"""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


@TASKS.registered()
class Classification(Task):
    name, inputs, shifted_sets, test = "classification", "images", True, "McNemar"
    balanced, augments = True, True

    def log_probs(self, out):
        return F.log_softmax(out.double(), 1)

    def outcome(self, out, y):
        return out.argmax(1).cpu()

    def accuracy(self, outcomes, y):
        return 100.0 * (outcomes == y.cpu()).sum().item() / len(y)

    def paired(self, ticket, dense, y):
        only_ticket, only_dense = discordant(ticket, dense, y.cpu())
        p = mcnemar_from(only_ticket, only_dense)
        return {"p_value": p, "mcnemar_p": p, "ticket_only_correct": only_ticket, "dense_only_correct": only_dense}

    def indices(self, y, n, seed):
        return balanced_indices(y, n, seed)

    def prepare(self, x, mean, std, channels_last):
        x = (x.float().div_(255) - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def tensors(self, x, y, device):
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
        return xt.to(device), torch.from_numpy(np.asarray(y, np.int64)).to(device)

    def statistics(self, x):
        """Per-channel mean and std of the training images (float64 sums, in chunks)."""
        channels, device = x.shape[1], x.device
        sums = torch.zeros(channels, dtype=torch.float64, device=device)
        squares = torch.zeros(channels, dtype=torch.float64, device=device)
        for chunk in x.split(4096):
            v = chunk.double().div(255)
            sums += v.sum((0, 2, 3))
            squares += v.pow(2).sum((0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = sums / count
        std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
        return mean.float().view(1, channels, 1, 1), std.float().view(1, channels, 1, 1)

    def resident_bytes(self, shape):
        return int(np.prod(shape))  # uint8 pixels


MAX_EXP = 709.0  # exp of more overflows a float: a diverged model's perplexity is inf


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


@TASKS.registered()
class LanguageModeling(Task):
    """Next-token prediction on fixed-length sequences: every position predicts the next symbol."""

    name, inputs, shifted_sets = "language_modeling", "tokens", False
    test = "paired t on sequence accuracies"
    balanced, augments = False, False

    def log_probs(self, out):
        return F.log_softmax(out.double(), -1)

    def outcome(self, out, y):
        """Per sequence: its summed token loss (nats, float64) and its correctly predicted tokens
        (in chunks of sequences, so a large vocabulary's float64 logits stay within ~256 MB)."""
        rows = max(1, (1 << 25) // (out.shape[1] * out.shape[2]))
        parts = []
        for o, t in zip(out.split(rows), y.split(rows)):
            losses = F.cross_entropy(o.double().flatten(0, -2), t.flatten(), reduction="none").view(t.shape)
            parts.append(torch.stack([losses.sum(1), (o.argmax(-1) == t).sum(1).double()], 1).cpu())
        return torch.cat(parts)

    def accuracy(self, outcomes, y):
        return 100.0 * outcomes[:, 1].sum().item() / y.numel()

    def summary(self, outcomes, y):
        loss = outcomes[:, 0].sum().item() / y.numel()
        return {"loss": loss, "perplexity": math.exp(loss) if loss < MAX_EXP else math.inf}

    def paired(self, ticket, dense, y):
        """Paired t-tests over the same held-out sequences, ticket minus dense: of the sequences'
        next-token accuracies (``p_value``: the test of the accuracy delta Eq. 1 reads), and of
        their mean token losses (``loss_p_value``, with the 95 % interval of the mean difference in
        nats per token)."""
        tokens = y.shape[1]
        accuracy = paired_t(100.0 * (ticket[:, 1] - dense[:, 1]).numpy() / tokens)
        loss = paired_t(((ticket[:, 0] - dense[:, 0]) / tokens).numpy())
        return {"p_value": accuracy[1], "loss_delta": loss[0], "loss_p_value": loss[1],
                **({"loss_delta_ci_low": loss[2], "loss_delta_ci_high": loss[3]} if loss[2] is not None else {})}

    def indices(self, y, n, seed):
        return np.random.default_rng(seed).permutation(len(y))[:n].astype(np.int64)

    def prepare(self, x, mean, std, channels_last):
        return x

    def tensors(self, x, y, device):
        """Windows of T + 1 tokens as inputs (the first T) and targets (the last T)."""
        windows = torch.from_numpy(np.asarray(x, np.int64))
        return windows[:, :-1].contiguous().to(device), windows[:, 1:].contiguous().to(device)

    def statistics(self, x):
        return torch.zeros((), device=x.device), torch.ones((), device=x.device)  # token ids are not normalised

    def resident_bytes(self, shape):
        return 2 * 8 * int(np.prod(shape))  # int64 inputs and targets
