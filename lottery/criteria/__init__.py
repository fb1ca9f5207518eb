"""Block-importance criteria: a registry from name to scoring function.

Every criterion receives the model (at the weights the mode scores on), a class-balanced
scoring set and its config, and returns one score per removable block (``plan.removable``
order). The lowest-scoring blocks are removed. New criteria join with ``@register``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from lottery.models import ResNet


@dataclass
class ScoringSet:
    x: torch.Tensor  # normalised images, unaugmented
    y: torch.Tensor
    batch_size: int

    def chunks(self):
        """(x, y, weight) with weights summing to 1, so summed chunk losses equal the mean loss."""
        n = len(self.y)
        for start in range(0, n, self.batch_size):
            x, y = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            yield x, y, len(y) / n


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: Callable  # (model, ScoringSet | None, cfg, seed) -> Tensor[num_removable]
    needs_data: bool
    doc: str


CRITERIA: dict[str, Criterion] = {}


def register(name: str, needs_data: bool = True):
    def wrap(fn):
        CRITERIA[name] = Criterion(name, fn, needs_data, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return wrap


def score_blocks(name: str, model: ResNet, scoring: ScoringSet | None, cfg, seed: int) -> torch.Tensor:
    """Scores of the removable blocks; the model itself is never modified (a copy is scored)."""
    crit = CRITERIA[name]
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.grad = None
    scores = crit.fn(work, scoring if crit.needs_data else None, cfg, seed)
    scores = scores.detach().double().cpu()
    expected = len(model.plan.removable)
    if scores.shape != (expected,):
        raise RuntimeError(f"criterion {name} returned shape {tuple(scores.shape)}, expected ({expected},)")
    return scores


# Importing the modules registers their criteria.
from lottery.criteria import random, saliency  # noqa: E402,F401
