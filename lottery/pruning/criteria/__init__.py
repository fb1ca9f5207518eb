"""Importance criteria: a registry from name to scoring functions (definitions and sources:
docs/design.md §3).

Every criterion receives the network (at the weights the mode scores on; any family, through
``lottery.networks``), a class-balanced scoring set and its config, and yields one score per
removable block (in forward order); the lowest-scoring blocks are removed. Criteria defined per
weight (SNIP, GraSP, SynFlow, L1) join with ``@per_weight`` and then also score filters (the
output channels of each narrowable convolution) for the filter-pruning baseline; criteria defined
per block join with ``@per_block``. A criterion with hyperparameters declares them as a
``CriterionConfig`` subclass beside it (``settings=``). A criterion that reads feature maps says
so (``layout="maps"``), and pairing it with a network whose blocks output tokens is an error at
the door. Criteria never import the experiment layer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lottery import networks
from lottery.config import CriterionConfig, DataConfig, Registry, bad_value, import_kinds
from lottery.errors import LotteryError
from lottery.pruning.criteria.weights import aggregate_blocks, aggregate_filters
from lottery.training.data import task_of
from lottery.training.devices import exact_matmuls
from lottery.training.tasks import TASKS, Task


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


@dataclass(frozen=True)
class Criterion:
    name: str
    blocks: Callable  # (model, ScoringSet | None, cfg, seed) -> Tensor[num_removable]
    filters: Callable | None  # same arguments -> [Tensor[mid_ch] for every block]
    needs_data: bool
    doc: str
    per_weight: Callable | None = None  # same arguments -> {parameter name: per-weight scores}
    layout: str | None = None  # "maps": defined only where block outputs are (N, C, H, W) feature maps
    additive: bool = False  # a saliency that sums over weights: a block and a filter in the same units
    tasks: tuple[str, ...] | None = None  # the tasks it is defined on (None: every task)


CRITERIA: Registry[Criterion] = Registry("criterion", group="criterion", base=CriterionConfig)
IMAGES = ("classification",)  # the tasks of criteria read from pooled maps, class labels or image classifiers' weights


def _doc(fn) -> str:
    return (fn.__doc__ or "").strip().split("\n")[0]


def per_block(name: str, needs_data: bool = True, layout: str | None = None,
              settings: type[CriterionConfig] | None = None, filters: Callable | None = None,
              tasks: tuple[str, ...] | None = None):
    """A criterion defined per block: ``fn`` returns one score per removable block (``filters``:
    its own per-filter scoring, when it has one; ``tasks``: the tasks it is defined on, when not all)."""

    def wrap(fn):
        CRITERIA.add(name, Criterion(name, fn, filters, needs_data, _doc(fn), layout=layout, tasks=tasks), settings)
        return fn

    return wrap


def per_weight(name: str, needs_data: bool = True, additive: bool = False,
               settings: type[CriterionConfig] | None = None, tasks: tuple[str, ...] | None = None):
    """A criterion defined per weight: ``fn`` returns {parameter name: per-weight scores},
    aggregated (``criterion.aggregate``) per block and per filter; ``additive`` when its sum over
    any set of weights is that set's saliency (what scoring blocks and filters together needs)."""

    def wrap(fn):
        def blocks(model, scoring, cfg, seed):
            return aggregate_blocks(model, fn(model, scoring, cfg, seed), cfg.aggregate)

        def filters(model, scoring, cfg, seed):
            return aggregate_filters(model, fn(model, scoring, cfg, seed), cfg.aggregate)

        CRITERIA.add(name, Criterion(name, blocks, filters, needs_data, _doc(fn), per_weight=fn, additive=additive,
                                     tasks=tasks), settings)
        return fn

    return wrap


def _run(fn, name: str, model: nn.Module, scoring, seed: int, cfg):
    """The criterion on a copy of the network (scoring may switch modes, cast or overwrite
    weights), in full fp32 (no TF32 on a GPU: near-ties rank as on a CPU), with torch's random
    state seeded by ``seed`` and restored after: the scores depend on the seed alone, whatever
    ran before in the process."""
    crit = CRITERIA[name]
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.grad = None
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with exact_matmuls(), torch.random.fork_rng(devices=gpus):  # seeding reseeds every GPU: restore them all
        torch.manual_seed(seed)
        return fn(work, scoring if crit.needs_data else None, cfg, seed)


def _finite(name: str, scores: list[torch.Tensor], what: str, labels: list) -> None:
    """Refuse NaN or infinite scores: sorting them would remove arbitrary blocks or filters."""
    bad = [label for label, s in zip(labels, scores) if not torch.isfinite(s).all()]
    if bad:
        raise LotteryError(f"criterion {name} gave NaN or infinite scores for {what} [{', '.join(map(str, bad))}]; "
                           "nothing was removed (check the weights it scores, e.g. a diverged network, or choose "
                           "another criterion)")


def _block_scores(name: str, model: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach().double().cpu()
    removable = [b.path for b in networks.anatomy(model).removable]
    if scores.shape != (len(removable),):
        raise RuntimeError(f"criterion {name} returned shape {tuple(scores.shape)}, expected ({len(removable)},)")
    _finite(name, list(scores), "blocks", removable)
    return scores


def _filter_scores(name: str, model: nn.Module, filters: list[torch.Tensor]) -> list[torch.Tensor]:
    filters = [s.detach().double().cpu() for s in filters]
    _finite(name, filters, "the filters of", [n.conv for n in networks.narrowables(model)])
    return filters


def _needs_filters(name: str) -> None:
    if CRITERIA[name].filters is None:
        raise LotteryError(f"criterion {name} scores blocks only; structure=filter takes one of: "
                           f"{', '.join(filter_criteria())}")


def score_blocks(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                 seed: int) -> torch.Tensor:
    """Scores of the removable blocks; the model itself is never modified (a copy is scored)."""
    return _block_scores(name, model, _run(CRITERIA[name].blocks, name, model, scoring, seed, cfg))


def score_filters(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                  seed: int) -> list[torch.Tensor]:
    """Scores of every block's first-convolution filters (one tensor per block)."""
    _needs_filters(name)
    return _filter_scores(name, model, _run(CRITERIA[name].filters, name, model, scoring, seed, cfg))


def score_blocks_and_filters(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                             seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both granularities at once: a per-weight criterion (GraSP's double backprop, say) is
    computed once and aggregated twice."""
    crit = CRITERIA[name]
    if crit.per_weight is None:
        return score_blocks(name, model, scoring, cfg, seed), score_filters(name, model, scoring, cfg, seed)
    weights = _run(crit.per_weight, name, model, scoring, seed, cfg)
    return (_block_scores(name, model, aggregate_blocks(model, weights, cfg.aggregate)),
            _filter_scores(name, model, aggregate_filters(model, weights, cfg.aggregate)))


def score_weights(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                  seed: int) -> dict[str, torch.Tensor]:
    """The per-weight scores of a per-weight criterion (CPU, float64), keyed by parameter name."""
    weights = _run(CRITERIA[name].per_weight, name, model, scoring, seed, cfg)
    out = {k: v.detach().double().cpu() for k, v in weights.items()}
    _finite(name, list(out.values()), "the weights", list(out))
    return out


def additive_criteria() -> list[str]:
    return sorted(n for n, c in CRITERIA.items() if c.additive)


def check(cfg: CriterionConfig, data_cfg: DataConfig, prunes: bool, anatomy: networks.Anatomy,
          model: str) -> None:
    """A known criterion, defined for the network's block outputs; one that reads data gets a
    scoring set the training split can fill."""
    crit, task = CRITERIA[cfg.name], task_of(data_cfg).name
    if prunes and crit.tasks is not None and task not in crit.tasks:
        fits = sorted(n for n, c in CRITERIA.items() if c.tasks is None or task in c.tasks)
        raise LotteryError(f"criterion {cfg.name} is defined for {', '.join(crit.tasks)}, not for {task} (data="
                           f"{data_cfg.name}): use one of {', '.join(fits)}")
    if prunes and crit.layout not in (None, anatomy.layout):
        fits = sorted(n for n, c in CRITERIA.items() if c.layout in (None, anatomy.layout))
        raise LotteryError(f"criterion {cfg.name} reads {crit.layout} (N, C, H, W) at block outputs, but {model}'s "
                           f"blocks output {anatomy.layout}: use one of {', '.join(fits)}")
    if not prunes or not crit.needs_data:
        return
    if cfg.scoring_size < 1:
        raise LotteryError(f"criterion {cfg.name} needs scoring data: set criterion.scoring_size >= 1")
    if cfg.batch_size < 1:
        raise bad_value("criterion.batch_size", cfg.batch_size, "score in chunks of at least one image")
    if data_cfg.train_size is not None and cfg.scoring_size > data_cfg.train_size:
        raise bad_value("criterion.scoring_size", cfg.scoring_size, f"exceeds data.train_size={data_cfg.train_size}")


def filter_criteria() -> list[str]:
    return sorted(n for n, c in CRITERIA.items() if c.filters is not None)


import_kinds(__name__, __path__)  # each module registers its criteria (with the registry above in place)
