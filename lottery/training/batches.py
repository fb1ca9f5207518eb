"""The training split batched on its device: an epoch's plan (order, crop offsets, flips) from a
per-epoch seeded generator, image augmentation (4-pixel pad, random 32x32 crop, horizontal flip)
and normalisation run batched there, evaluation batches, and the scoring set. No per-image PIL
work in the loop, and an epoch's order and crops depend only on (seed, epoch), so a resumed run
sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from lottery.config import TrainConfig
from lottery.training.data import Dataset, Split

PAD = 4


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
    """Whether the recipe drops an epoch's last partial batch: a captured CUDA graph trains on one
    static batch shape (dense and ticket alike: the choice is the recipe's). A compiled step does
    not: it takes a partial batch eagerly, so compiling never changes what is trained."""
    return bool(t.cuda_graph)


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
    if t.augment and data.task.augments:
        x = crop_flip(x, offsets, flips)
    return data.normalize(x, t.channels_last), data.targets(data.train.y[idx])


def eval_batches(data: Dataset, split: Split, batch_size: int, channels_last: bool = True):
    for start in range(0, len(split), batch_size):
        yield (data.normalize(split.x[start:start + batch_size], channels_last),
               data.targets(split.y[start:start + batch_size]))


def num_batches(n: int, t: TrainConfig) -> int:
    full, rest = divmod(n, t.batch_size)
    return full + (rest >= 2 and not drops_last(t))


def scoring_set(data: Dataset, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample of the training split by the task's subset rule (seeded: class-balanced, every
    chunk holding every class, for images), unaugmented, as the network reads it."""
    chosen = data.subset(data.train, size, seed)
    return data.normalize(chosen.x), data.targets(chosen.y)
