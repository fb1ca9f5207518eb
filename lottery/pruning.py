"""What a trial removes: whole blocks (the paper's layer tickets) or filters (the structured-LTH
baseline of Table 3), chosen from criterion scores, as a record plus the surgery that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from lottery import models
from lottery.criteria import (CRITERIA, ScoringSet, filter_criteria, score_blocks, score_blocks_and_filters,
                              score_filters)
from lottery.errors import LotteryError
from lottery.surgery import check_filter_target, select_blocks, select_filters


@dataclass
class Pruning:
    apply: Callable[[nn.Module], nn.Module]  # builds the ticket from a network of the dense architecture
    record: dict  # what was scored and removed (logged as an artifact)
    metrics: dict  # logged with the ticket's metrics
    label: str  # for the run name, e.g. "p2" or "p1-filter"
    artifact: str  # file name of ``record`` in the run's artifacts
    summary: str  # one line for the log


@dataclass(frozen=True)
class Request:
    """What a structure is asked to remove from a network scored at some weights."""

    cfg: object  # the trial config (criterion, seed, scope, target_filters)
    count: int  # blocks to remove (a filter ticket: the layer ticket's)
    model: nn.Module  # the network at the weights the mode scores on
    scoring: ScoringSet | None


def layers(req: Request) -> Pruning:
    """Remove the lowest-scoring residual blocks (every stage keeps one)."""
    c = req.cfg.criterion
    return _remove_blocks(req, score_blocks(c.name, req.model, req.scoring, c, req.cfg.seed))


def _remove_blocks(req: Request, scores) -> Pruning:
    anatomy = models.anatomy(req.model)
    removed = select_blocks(anatomy, scores, req.count)
    record = {"removable": [b.path for b in anatomy.removable], "stage": [b.stage for b in anatomy.removable],
              "scores": scores.tolist(), "removed": removed}
    summary = f"block scores [{' '.join(f'{s:.3g}' for s in scores.tolist())}] -> removing blocks {removed}"
    return Pruning(lambda m: models.without(m, removed), record, {"blocks_removed": len(removed)}, f"p{req.count}",
                   "blocks.json", summary)


def filters(req: Request) -> Pruning:
    """Remove the lowest-scoring filters of the narrowable convolutions down to a filter count: by
    default the count of the layer ticket of the same density, so both tickets are equally sparse."""
    c, model = req.cfg.criterion, req.model
    if req.cfg.target_filters is not None:
        target, layer_record = req.cfg.target_filters, None
        scores = score_filters(c.name, model, req.scoring, c, req.cfg.seed)
    else:
        block_scores, scores = score_blocks_and_filters(c.name, model, req.scoring, c, req.cfg.seed)
        layer = _remove_blocks(req, block_scores)
        target, layer_record = models.count_filters(layer.apply(model)), layer.record
    total = models.count_filters(model)
    keep = select_filters(models.narrowables(model), scores, total, target, req.cfg.scope)
    record = {"target_filters": target, "scope": req.cfg.scope, "kept": keep,
              "scores": [s.tolist() for s in scores], "layer_ticket": layer_record}
    metrics = {"target_filters": target, "filters_removed": total - target, "blocks_removed": 0}
    summary = f"keeping {target} of {total} filters ({req.cfg.scope} ranking)"
    return Pruning(lambda m: models.narrowed(m, keep), record, metrics, f"p{req.count}-filter", "filters.json",
                   summary)


def check_filters(cfg, net: nn.Module, name: str) -> None:
    """Filter tickets need a criterion that scores filters, a family that has narrowable
    convolutions, and a reachable filter count."""
    if CRITERIA[cfg.criterion.name].filters is None:
        raise LotteryError(f"structure=filter needs a criterion that scores filters: "
                           f"{', '.join(filter_criteria())} (got {cfg.criterion.name})")
    narrowables = models.narrowables(net)
    if cfg.target_filters is not None:
        check_filter_target(models.count_filters(net), narrowables, cfg.target_filters,
                            f"target_filters={cfg.target_filters}", name)


@dataclass(frozen=True)
class Structure:
    prune: Callable[[Request], Pruning]
    check: Callable[..., None]  # (cfg, the dense network's skeleton, its name): raises LotteryError before any work


STRUCTURES: dict[str, Structure] = {"layer": Structure(layers, lambda cfg, net, name: None),
                                    "filter": Structure(filters, check_filters)}
SCOPES = ("global", "layerwise")
