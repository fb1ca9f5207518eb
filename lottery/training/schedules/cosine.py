"""The cosine schedule (Loshchilov & Hutter 2017, without restarts): from the peak rate where the
warm-up ends down to ``floor`` x peak at the end of training, step by step. How transformers and
ConvNeXt are trained."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lottery.config import ScheduleConfig, TrainConfig, bad_value, opt
from lottery.training.schedules.base import SCHEDULES, Schedule, warmup_epochs


@dataclass
class CosineSettings(ScheduleConfig):
    floor: float = opt(0.0, "the rate at the end of training, as a share of the peak, in [0, 1)")


@SCHEDULES.registered(CosineSettings)
class Cosine(Schedule):
    name = "cosine"
    doc = "half a cosine from the peak (after the warm-up) to floor x peak at the end"
    per_step = True

    def factor(self, s: CosineSettings, t: TrainConfig, position: float) -> float:
        start = warmup_epochs(t)
        progress = min(1.0, max(0.0, (position - start) / max(t.epochs - start, 1e-9)))
        return s.floor + (1 - s.floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def check(self, s: CosineSettings, t: TrainConfig) -> None:
        if not 0 <= s.floor < 1:
            raise bad_value("schedule.floor", s.floor, "must be in [0, 1)")
