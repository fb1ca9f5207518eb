"""The step schedule: the rate multiplied by ``gamma`` at each milestone epoch (the paper's recipe:
x0.1 at epochs 100 and 150 of 200). Milestones default to 1/2 and 3/4 of the training, so every
profile's budget keeps the paper's shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

from lottery.config import ScheduleConfig, TrainConfig, bad_value, opt
from lottery.training.schedules.base import SCHEDULES, Schedule


@dataclass
class StepSettings(ScheduleConfig):
    milestones: List[int] = opt("${lottery.epochs_at:0.5,0.75}", "epochs at which the rate is multiplied by gamma, "
                                "increasing (default: 1/2 and 3/4 of train.epochs, floored)")
    gamma: float = opt(0.1, "factor at each milestone, in (0, 1]")


@SCHEDULES.registered(StepSettings)
class Step(Schedule):
    name = "step"
    doc = "x gamma at each milestone epoch (the paper's recipe)"
    per_step = False

    def factor(self, s: StepSettings, t: TrainConfig, position: float) -> float:
        epoch = math.floor(position)
        return s.gamma ** sum(epoch >= m for m in s.milestones)

    def check(self, s: StepSettings, t: TrainConfig) -> None:
        bad = [m for m in s.milestones if not 0 < m < t.epochs]
        if bad:
            raise bad_value("schedule.milestones", list(s.milestones),
                            f"{bad} lie outside the schedule (1..{t.epochs - 1})")
        if list(s.milestones) != sorted(set(s.milestones)):
            raise bad_value("schedule.milestones", list(s.milestones), "must be strictly increasing")
        if not 0 < s.gamma <= 1:
            raise bad_value("schedule.gamma", s.gamma, "must be in (0, 1]")
