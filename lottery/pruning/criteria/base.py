"""The criterion contract and its registry (definitions and sources: docs/design.md §3).

A criterion is a function ``(model, scoring, cfg, seed)`` of the network at the weights the mode
scores on, its class-balanced scoring set (``None`` for a data-free one), its settings (the
group's ``CriterionConfig`` or its own subclass of it) and the trial's seed. Defined per block
(``@per_block``), it returns one score per removable block in forward order, a
``Tensor[num_removable]``; defined per weight (``@per_weight``), it returns ``{parameter name:
per-weight scores}`` for the weights it scores, which are summed (or averaged) per block and per
filter. The lowest-scoring blocks or filters are removed. The scoring API (``scoring``) calls it
on a copy of the network, in fp32 with torch's generator seeded, and checks what it returns.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from lottery import networks
from lottery.config import CriterionConfig, DataConfig, Registry, bad_value
from lottery.errors import LotteryError
from lottery.pruning.criteria.weights import aggregate_blocks, aggregate_filters
from lottery.training.data import task_of
from lottery.training.tasks.base import TASKS, Task


@dataclass
class ScoringSet:
    x: torch.Tensor  # inputs as the network reads them: normalised images, or token ids; unaugmented
    y: torch.Tensor  # their targets: labels, or next tokens
    batch_size: int
    task: Task = TASKS["classification"]  # what the loss and the output distribution are (``lottery.training.tasks``)

    def chunks(self):
        """(x, y, weight) with weights summing to 1, so summed chunk losses equal the mean loss."""
        n = len(self.y)
        for start in range(0, n, self.batch_size):
            x, y = self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            yield x, y, len(y) / n


class BlockScores(Protocol):
    """A per-block criterion (``@per_block``)."""

    def __call__(self, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                 seed: int) -> torch.Tensor:
        """One score per removable block, in forward order: a ``Tensor[num_removable]``."""


class FilterScores(Protocol):
    """A criterion's scores of filters (``per_block(filters=...)``, or derived per weight)."""

    def __call__(self, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                 seed: int) -> list[torch.Tensor]:
        """For every narrowable convolution (``networks.narrowables``), one score per output channel."""


class WeightScores(Protocol):
    """A per-weight criterion (``@per_weight``)."""

    def __call__(self, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                 seed: int) -> dict[str, torch.Tensor]:
        """{parameter name: scores of its weights, shaped like the parameter} for the weights scored."""


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its scoring functions (``BlockScores``, ``FilterScores``,
    ``WeightScores``), checked at construction to take ``(model, scoring, cfg, seed)``, and what
    it is defined on."""

    name: str
    blocks: BlockScores
    filters: FilterScores | None  # scores filters too (structure=filter), when not None
    needs_data: bool  # False: data-free, called with scoring=None
    doc: str  # one line for --help
    per_weight: WeightScores | None = None  # defined per weight: blocks and filters aggregate it
    layout: str | None = None  # "maps": defined only where block outputs are (N, C, H, W) feature maps
    additive: bool = False  # a saliency that sums over weights: a block and a filter in the same units
    tasks: tuple[str, ...] | None = None  # the tasks it is defined on (None: every task)

    def __post_init__(self):
        for what in ("blocks", "filters", "per_weight"):
            fn = getattr(self, what)
            if fn is None:
                continue
            try:
                inspect.signature(fn).bind("model", "scoring", "cfg", 0)
            except TypeError as e:
                raise TypeError(f"criterion {self.name}: its {what} function must take (model, scoring, cfg, seed) "
                                f"({e})") from None


CRITERIA: Registry[Criterion] = Registry("criterion", group="criterion", base=CriterionConfig)
IMAGES = ("classification",)  # the tasks of criteria read from pooled maps, class labels or image classifiers' weights


def _doc(fn) -> str:
    return (fn.__doc__ or "").strip().split("\n")[0]


def per_block(name: str, needs_data: bool = True, layout: str | None = None,
              settings: type[CriterionConfig] | None = None, filters: FilterScores | None = None,
              tasks: tuple[str, ...] | None = None):
    """Register ``fn``, a ``BlockScores``, as criterion ``name`` (``filters``: its own per-filter
    scoring, when it has one; ``tasks``: the tasks it is defined on, when not all; ``settings``:
    its ``CriterionConfig`` subclass, when it has hyperparameters)."""

    def wrap(fn: BlockScores) -> BlockScores:
        CRITERIA.add(name, Criterion(name, fn, filters, needs_data, _doc(fn), layout=layout, tasks=tasks), settings)
        return fn

    return wrap


def per_weight(name: str, needs_data: bool = True, additive: bool = False,
               settings: type[CriterionConfig] | None = None, tasks: tuple[str, ...] | None = None):
    """Register ``fn``, a ``WeightScores``, as criterion ``name``: its scores are aggregated
    (``criterion.aggregate``) per block and per filter; ``additive`` when its sum over any set of
    weights is that set's saliency (what scoring blocks and filters together needs)."""

    def wrap(fn: WeightScores) -> WeightScores:
        def weights(model, scoring, cfg, seed):
            out = fn(model, scoring, cfg, seed)
            if not isinstance(out, dict):
                raise TypeError(f"criterion {name} returned {type(out).__name__}, expected {{parameter name: "
                                "per-weight scores}")
            return out

        def blocks(model, scoring, cfg, seed):
            return aggregate_blocks(model, weights(model, scoring, cfg, seed), cfg.aggregate)

        def filters(model, scoring, cfg, seed):
            return aggregate_filters(model, weights(model, scoring, cfg, seed), cfg.aggregate)

        CRITERIA.add(name, Criterion(name, blocks, filters, needs_data, _doc(fn), per_weight=weights,
                                     additive=additive, tasks=tasks), settings)
        return fn

    return wrap


def additive_criteria() -> list[str]:
    return sorted(n for n, c in CRITERIA.items() if c.additive)


def filter_criteria() -> list[str]:
    return sorted(n for n, c in CRITERIA.items() if c.filters is not None)


@dataclass(frozen=True)
class Target:
    """What a criterion's settings are checked against at validation: a settings class refuses
    values that make it meaningless on this network with a static ``check(cfg, target)``."""

    anatomy: networks.Anatomy  # of the dense network
    task: str  # the data's task
    model: str  # the network's label, for messages
    remove: int  # the blocks the trial removes


def check(cfg: CriterionConfig, data_cfg: DataConfig, prunes: bool, anatomy: networks.Anatomy,
          model: str, remove: int = 0) -> None:
    """A known criterion, defined for the network's block outputs, with settings that mean
    something on it; one that reads data gets a scoring set the training split can fill."""
    crit, task = CRITERIA[cfg.name], task_of(data_cfg).name
    if prunes and crit.tasks is not None and task not in crit.tasks:
        fits = sorted(n for n, c in CRITERIA.items() if c.tasks is None or task in c.tasks)
        raise LotteryError(f"criterion {cfg.name} is defined for {', '.join(crit.tasks)}, not for {task} (data="
                           f"{data_cfg.name}): use one of {', '.join(fits)}")
    if prunes and crit.layout not in (None, anatomy.layout):
        fits = sorted(n for n, c in CRITERIA.items() if c.layout in (None, anatomy.layout))
        raise LotteryError(f"criterion {cfg.name} reads {crit.layout} (N, C, H, W) at block outputs, but {model}'s "
                           f"blocks output {anatomy.layout}: use one of {', '.join(fits)}")
    meaningful = getattr(CRITERIA.settings_of(cfg.name), "check", None)
    if prunes and meaningful is not None:
        meaningful(cfg, Target(anatomy, task, model, remove))
    if not prunes or not crit.needs_data:
        return
    if cfg.scoring_size < 1:
        raise LotteryError(f"criterion {cfg.name} needs scoring data: set criterion.scoring_size >= 1")
    if cfg.batch_size < 1:
        raise bad_value("criterion.batch_size", cfg.batch_size, "score in chunks of at least one image")
    if data_cfg.train_size is not None and cfg.scoring_size > data_cfg.train_size:
        raise bad_value("criterion.scoring_size", cfg.scoring_size, f"exceeds data.train_size={data_cfg.train_size}")
