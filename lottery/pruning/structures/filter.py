"""``structure=filter``: the structured-LTH baseline of Table 3 (docs/design.md §6) — the
lowest-scoring filters of the narrowable convolutions removed down to the filter count of the
layer ticket of the same density (``match=flops``: down to its FLOPs, ranked as ``joint`` ranks)."""

from __future__ import annotations

from torch import nn

from lottery import networks
from lottery.config import TrialConfig
from lottery.errors import LotteryError, check_choice
from lottery.pruning.criteria import CRITERIA, filter_criteria, score_blocks_and_filters, score_filters
from lottery.pruning.selection import check_filter_target, select_blocks, select_filters
from lottery.pruning.structures.base import STRUCTURES, Pruning, Request, Structure
from lottery.pruning.structures.joint import at_layer_flops, check_joint
from lottery.pruning.structures.layer import chosen

MATCHES = ("filters", "flops")  # what a filter ticket matches the layer ticket on


def filters(req: Request) -> Pruning:
    """Remove the lowest-scoring filters of the narrowable convolutions down to a filter count: by
    default the count of the layer ticket of the same density, so both tickets are equally sparse
    (``match=flops``: down to the layer ticket's FLOPs, by score per FLOP, as ``joint`` ranks)."""
    c, model = req.cfg.criterion, req.model
    if req.cfg.match == "flops":
        return at_layer_flops(req, with_blocks=False)
    if req.cfg.target_filters is not None:
        target, layer_record = req.cfg.target_filters, None
        scores = score_filters(c.name, model, req.scoring, c, req.cfg.seed)
    else:
        block_scores, scores = score_blocks_and_filters(c.name, model, req.scoring, c, req.cfg.seed)
        anatomy = networks.anatomy(model)
        removed = select_blocks(anatomy, block_scores, req.count)
        target, layer_record = networks.count_filters(networks.without(model, removed)), chosen(anatomy, block_scores,
                                                                                            removed)
    total = networks.count_filters(model)
    keep = select_filters(networks.narrowables(model), scores, total, target, req.cfg.scope)
    record = {"target_filters": target, "scope": req.cfg.scope, "kept": keep,
              "scores": [s.tolist() for s in scores], "layer_ticket": layer_record}
    metrics = {"target_filters": target, "filters_removed": total - target, "blocks_removed": 0}
    summary = f"keeping {target} of {total} filters ({req.cfg.scope} ranking)"
    return Pruning(lambda m: networks.narrowed(m, keep), record, metrics, f"p{req.count}-filter", "filters.json",
                   summary)


def check_filters(cfg: TrialConfig, net: nn.Module, name: str) -> None:
    """Filter tickets need a criterion that scores filters (an additive one to match FLOPs), a
    family that has narrowable convolutions, and a reachable filter count."""
    check_choice("match", cfg.match, MATCHES)
    if cfg.match == "flops":
        return check_joint(cfg, net, name, "structure=filter match=flops")
    if CRITERIA[cfg.criterion.name].filters is None:
        raise LotteryError(f"structure=filter needs a criterion that scores filters: "
                           f"{', '.join(filter_criteria())} (got {cfg.criterion.name})")
    narrowables = networks.narrowables(net)
    if cfg.target_filters is not None:
        check_filter_target(networks.count_filters(net), narrowables, cfg.target_filters,
                            f"target_filters={cfg.target_filters}", name)


@STRUCTURES.registered()
class Filter(Structure):
    name = "filter"

    def prune(self, req: Request) -> Pruning:
        return filters(req)

    def check(self, cfg: TrialConfig, net: nn.Module, name: str) -> None:
        super().check(cfg, net, name)
        check_filters(cfg, net, name)
