"""The statistics a verdict rests on (docs/design.md §8.2): paired deltas over seeds, and McNemar's exact
test of one ticket against its dense network on the same test images."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

CONFIDENCE = 0.95
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
    from scipy import stats

    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Stat(mean, None, 1)
    n, std = len(values), statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1)) if std > 0 else (1.0 if mean == 0 else 0.0)
    return Stat(mean, std, n, mean - half, mean + half, p)


def discordant(ticket: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Images only the ticket gets right, and images only the dense network gets right."""
    ticket_right, dense_right = ticket == labels, dense == labels
    return int((ticket_right & ~dense_right).sum()), int((dense_right & ~ticket_right).sum())


def mcnemar_p(ticket: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> float:
    """McNemar's exact test (two-sided binomial on the discordant pairs) of two classifiers'
    predictions on the same images: is one right where the other is wrong more often than chance?"""
    return mcnemar_from(*discordant(ticket, dense, labels))


def mcnemar_from(b: int, c: int) -> float:
    """McNemar's exact p from the discordant counts."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
