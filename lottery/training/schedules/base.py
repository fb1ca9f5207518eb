"""The contract of a learning-rate schedule kind, the ``SCHEDULES`` registry (``schedule=NAME``),
and the rate of every step (``lr_at``): the recipe's peak rate x the schedule's factor x the share
of the linear warm-up.

The rate is a pure function of the absolute epoch and step, never of the run's history: a ticket
trained from epoch i sees exactly the dense run's rates from epoch i on, and a resumed run the
rates of an uninterrupted one. The warm-up scales whatever the schedule gives, so it is the same
for every schedule; a schedule that decays continuously starts its decay where the warm-up ends.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from lottery.config import Registry, ScheduleConfig, TrainConfig

if TYPE_CHECKING:  # a recipe holds its kinds' settings: imported where it is built, not here
    from lottery.training.recipe import Recipe


class Schedule(ABC):
    """One schedule kind (a subclass each, registered by name in ``SCHEDULES`` with its settings)."""

    name: ClassVar[str]
    doc: ClassVar[str]  # one line for --help
    per_step: ClassVar[bool]  # whether the factor changes within an epoch (else it is set once per epoch)

    @abstractmethod
    def factor(self, s: ScheduleConfig, t: TrainConfig, position: float) -> float:
        """The share of the peak rate at ``position`` (epochs since the start, fractional)."""

    def check(self, s: ScheduleConfig, t: TrainConfig) -> None:
        """The settings against their rules and the training's length, before any work."""


SCHEDULES: Registry[Schedule] = Registry("schedule", "schedule", ScheduleConfig)


def warmup_epochs(t: TrainConfig) -> float:
    """The warm-up's length in epochs: ``train.warmup_epochs``, plus ``train.warmup_fraction`` of
    the schedule (a recipe's warm-up, the same share of any budget)."""
    return t.warmup_epochs + t.warmup_fraction * t.epochs


def warmup(epoch: int, step: int, steps: int, t: TrainConfig) -> float:
    """The share of the scheduled rate a step takes under the linear warm-up: (k + 1) / (w x
    steps) at the k-th step of training, 1 after the warm-up's w epochs."""
    w = warmup_epochs(t)
    if not w:
        return 1.0
    return min(1.0, (epoch * steps + step + 1) / (w * steps))


def lr_at(r: Recipe, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The learning rate of step ``step`` (of ``steps``) of the absolute epoch ``epoch``."""
    kind = SCHEDULES[r.schedule.name]
    return r.peak_lr * kind.factor(r.schedule, r.train, epoch + step / steps) * warmup(epoch, step, steps, r.train)


def in_warmup(epoch: int, t: TrainConfig) -> bool:
    return epoch < math.ceil(warmup_epochs(t))
