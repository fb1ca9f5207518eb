"""The learning-rate schedule: the rate of each epoch (``lr_at``) and the share of it a step takes
under the linear warm-up (``warmup``).

Both are pure functions of the absolute epoch and step, never of the run's history: a ticket
trained from epoch i sees exactly the dense run's rates from epoch i on, and a resumed run the
rates of an uninterrupted one. The schedule gives an epoch's rate; the warm-up scales whatever
rate the schedule gives, so it stays the same for any schedule.
"""

from __future__ import annotations

from lottery.config import TrainConfig


def lr_at(epoch: int, t: TrainConfig) -> float:
    """The learning rate of the given (absolute) epoch under the multistep schedule."""
    return t.lr * t.gamma ** sum(epoch >= m for m in t.milestones)


def warmup(epoch: int, step: int, steps: int, t: TrainConfig) -> float:
    """The share of the scheduled rate a step takes under the linear warm-up: (k + 1) / (w x
    steps) at the k-th step of training, 1 after ``train.warmup_epochs`` (a function of the
    absolute epoch and step, so a resumed or rewound training sees the same rates)."""
    if not t.warmup_epochs:
        return 1.0
    return min(1.0, (epoch * steps + step + 1) / (t.warmup_epochs * steps))
