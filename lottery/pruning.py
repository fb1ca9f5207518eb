"""What a trial removes: whole blocks (the paper's layer tickets) or filters (the structured-LTH
baseline of Table 3), chosen from criterion scores, as a plan plus the surgery that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lottery.config import blocks_to_remove
from lottery.criteria import (CRITERIA, ScoringSet, filter_criteria, score_blocks, score_blocks_and_filters,
                              score_filters)
from lottery.errors import LotteryError
from lottery.models import Plan, ResNet
from lottery.surgery import (check_filter_target, narrowed, plan_filters, remove_blocks, remove_filters,
                             select_blocks, select_filters)


@dataclass
class Pruning:
    plan: Plan  # the ticket's architecture
    apply: Callable[[ResNet], ResNet]  # builds the ticket from a network of the dense plan
    record: dict  # what was scored and removed (logged as an artifact)
    metrics: dict  # logged with the ticket's metrics
    label: str  # for the run name, e.g. "p2" or "p1-filter"
    artifact: str  # file name of ``record`` in the run's artifacts
    summary: str  # one line for the log


def layers(cfg, plan: Plan, model: ResNet, scoring: ScoringSet | None) -> Pruning:
    """Remove the lowest-scoring residual blocks (every stage keeps one)."""
    return _remove_blocks(cfg, plan, score_blocks(cfg.criterion.name, model, scoring, cfg.criterion, cfg.seed))


def _remove_blocks(cfg, plan: Plan, scores) -> Pruning:
    count = blocks_to_remove(cfg.density, len(plan.removable))
    removed = select_blocks(plan, scores, count)
    removable = plan.removable
    record = {"removable": removable, "stage": [plan.blocks[i].stage for i in removable],
              "scores": scores.tolist(), "removed": removed}
    summary = f"block scores [{' '.join(f'{s:.3g}' for s in scores.tolist())}] -> removing blocks {removed}"
    return Pruning(plan.without(removed), lambda m: remove_blocks(m, removed), record,
                   {"blocks_removed": len(removed)}, f"p{count}", "blocks.json", summary)


def filters(cfg, plan: Plan, model: ResNet, scoring: ScoringSet | None) -> Pruning:
    """Remove the lowest-scoring first-convolution filters down to a filter count: by default the
    count of the layer ticket of the same density, so both tickets are equally sparse."""
    c = cfg.criterion
    if cfg.target_filters is not None:
        target, layer_record = cfg.target_filters, None
        scores = score_filters(c.name, model, scoring, c, cfg.seed)
    else:
        block_scores, scores = score_blocks_and_filters(c.name, model, scoring, c, cfg.seed)
        layer = _remove_blocks(cfg, plan, block_scores)
        target, layer_record = plan_filters(layer.plan), layer.record
    keep = select_filters(plan, scores, target, cfg.scope)
    new_plan = narrowed(plan, keep)
    record = {"target_filters": target, "scope": cfg.scope, "kept": keep,
              "scores": [s.tolist() for s in scores], "layer_ticket": layer_record}
    metrics = {"target_filters": target, "filters_removed": plan_filters(plan) - plan_filters(new_plan),
               "blocks_removed": 0}
    count = blocks_to_remove(cfg.density, len(plan.removable))
    summary = f"keeping {plan_filters(new_plan)} filters (target {target}, {cfg.scope} ranking)"
    return Pruning(new_plan, lambda m: remove_filters(m, keep), record, metrics, f"p{count}-filter",
                   "filters.json", summary)


def check_filters(cfg, plan: Plan) -> None:
    """Filter tickets need a criterion that scores filters, and a reachable filter count."""
    crit = CRITERIA[cfg.criterion.name]
    if crit.filters is None:
        raise LotteryError(f"structure=filter needs a criterion that scores filters: "
                           f"{', '.join(filter_criteria())} (got {cfg.criterion.name})")
    if cfg.target_filters is not None:
        check_filter_target(plan, cfg.target_filters, f"target_filters={cfg.target_filters}",
                            f"resnet{cfg.model.depth}")


@dataclass(frozen=True)
class Structure:
    prune: Callable[..., Pruning]  # (cfg, plan, scored model, scoring set) -> Pruning
    check: Callable[..., None]  # (cfg, plan) -> None, raises LotteryError before any work


STRUCTURES: dict[str, Structure] = {"layer": Structure(layers, lambda cfg, plan: None),
                                    "filter": Structure(filters, check_filters)}
SCOPES = ("global", "layerwise")
