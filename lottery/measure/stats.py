"""The statistics a verdict rests on (docs/design.md §8.2): paired deltas over seeds. One ticket against
its dense network on the same test examples is its task's paired test (``lottery.training.tasks``)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from lottery.training.tasks.base import CONFIDENCE, paired_t

ALPHA = 0.05  # 1 - CONFIDENCE: a difference is significant when its p is below it


@dataclass
class Stat:
    """Mean of a cell's values over seeds, with its sample std and 95 % Student-t interval."""

    mean: float
    std: float | None  # None with a single seed
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None  # two-sided one-sample t-test of mean 0 (n >= 2)

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (None when there is none)."""
        if self.ci_low is None:
            return None
        return self.ci_low > 0 or self.ci_high < 0


def summarize(values: list[float]) -> Stat | None:
    """Mean, std, n and the 95 % Student-t interval of the values (NaN and None dropped)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean, p, low, high = paired_t(values)
    if len(values) < 2:
        return Stat(mean, None, 1)
    return Stat(mean, statistics.stdev(values), len(values), low, high, p)


def seeds_needed(sd: float, n0: int, effect: float) -> int:
    """The smallest n >= n0 (n0 >= 2 pilot seeds) whose 95 % Student-t interval of a mean, at the
    pilot's sample sd, is no wider than ±effect: the sample size an internal pilot re-estimates from
    its variance alone (docs/design.md §8.2.1), never from its mean, so the final test keeps its level."""
    from scipy import stats

    q = 0.5 + CONFIDENCE / 2
    # t > z at every n, so no n below the normal interval's can do: start there, a few steps short
    n = max(n0, math.ceil((statistics.NormalDist().inv_cdf(q) * sd / effect) ** 2))
    while float(stats.t.ppf(q, n - 1)) * sd / math.sqrt(n) > effect:
        n += 1
    return n
