"""What a trial removes: whole blocks (the paper's layer tickets, at once or in rounds), filters
(the structured-LTH baseline of Table 3) or both together (``joint``), chosen from criterion
scores, as a record plus the surgery that builds it. A registry of structures, each checking the
settings it reads."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable

from torch import nn

from lottery import networks
from lottery.config import Registry, TrialConfig, bad_value, choice
from lottery.errors import LotteryError, check_choice
from lottery.pruning.criteria import (
    CRITERIA,
    ScoringSet,
    additive_criteria,
    filter_criteria,
    score_blocks,
    score_blocks_and_filters,
    score_filters,
)
from lottery.pruning.criteria.weights import scored_names
from lottery.pruning.joint import apply, greedy, module_flops
from lottery.pruning.selection import check_filter_target, select_blocks, select_filters, tied_blocks

log = logging.getLogger("lottery")


@dataclass
class Pruning:
    apply: Callable[[nn.Module], nn.Module]  # builds the ticket from a network of the dense architecture
    record: dict  # what was scored and removed (logged as an artifact)
    metrics: dict  # logged with the ticket's metrics
    label: str  # for the run name, e.g. "p2" or "p1-filter"
    artifact: str  # file name of ``record`` in the run's artifacts
    summary: str  # one line for the log
    tags: dict = field(default_factory=dict)  # logged with the ticket's tags (e.g. ties that block order decided)


@dataclass(frozen=True)
class Request:
    """What a structure is asked to remove from a network scored at some weights."""

    cfg: TrialConfig  # (criterion, seed, scope, target_filters, match)
    count: int  # blocks to remove (a filter or joint ticket: the layer ticket's)
    model: nn.Module  # the network at the weights the mode scores on
    scoring: ScoringSet | None
    rounds: int = 1  # re-scoring rounds at these weights (prune.rounds at initialization)


def blocks_per_round(count: int, rounds: int) -> list[int]:
    """``count`` blocks over ``rounds`` rounds as evenly as possible, the earlier rounds taking the one more."""
    base, extra = divmod(count, rounds)
    return [base + (r < extra) for r in range(rounds)]


def layers(req: Request) -> Pruning:
    """Remove the lowest-scoring residual blocks (every stage keeps one), in ``req.rounds`` rounds
    at the same weights: the smaller network is scored again after each round (no training is
    needed between them), and ``blocks.json`` holds every round's scores and choices."""
    c = req.cfg.criterion
    model, rounds = req.model, []
    for count in blocks_per_round(req.count, req.rounds):
        scores = score_blocks(c.name, model, req.scoring, c, req.cfg.seed)
        anatomy = networks.anatomy(model)
        removed = select_blocks(anatomy, scores, count)
        weights = {"weights": scored_names(model, c.weights)} if CRITERIA[c.name].per_weight else {}
        rounds.append({**_chosen(anatomy, scores, removed), **weights, **_ties(req, model, scores, removed)})
        model = networks.without(model, removed)
    return in_rounds(req.model, rounds)


def starts_as_identity(block: nn.Module) -> bool:
    """Whether a block holds a normalisation whose scale is all zero (its branch then adds nothing)."""
    return any(isinstance(m, networks.NORMS) and m.weight is not None and not m.weight.detach().any()
               for m in block.modules())


def _ties(req: Request, model: nn.Module, scores, removed: list[str]) -> dict:
    """Nothing when the scores decide which blocks go; else one line (``criterion.ties=refuse``)
    or, with ``criterion.ties=index``, a warning and the tied blocks for the record and the run."""
    tied = tied_blocks(networks.anatomy(model), scores, removed)
    if not tied:
        return {}
    c, cfg = req.cfg.criterion, req.cfg
    where = "at initialization" if cfg.mode.name == "init" else "on the trained weights"
    about = (f"are all {float(scores[0]):.3g}: it cannot tell the blocks apart" if bool((scores == scores[0]).all())
             else f"tie between the removed {removed} and the kept {tied}: block order, not the criterion, "
                  "decides which go")
    if choice(c.ties) == "index":
        log.warning("%s scores %s %s; criterion.ties=index lets block order decide (tagged ties on the run)",
                    c.name, where, about)
        return {"ties": tied}
    why, fix = "", ""
    if not model.get_submodule(networks.head(model)).weight.detach().any():
        why = f" (its classifier {networks.head(model)} is all zero, so no gradient reaches the blocks)"
        fix = "model.head_init=normal, or " if "head_init" in cfg.model else ""
    elif all(starts_as_identity(model.get_submodule(b.path)) for b in networks.anatomy(model).removable):
        why = " (each block's last normalisation starts at zero, so every block starts as the identity)"
        fix = "model.zero_init_last=false, or " if "zero_init_last" in cfg.model else ""
    raise LotteryError(f"{c.name} scores of {networks.label(cfg.model)} {where} {about}{why}: use {fix}a criterion "
                       "that reads the blocks otherwise (e.g. block_influence), or criterion.ties=index to let block "
                       "order decide (tagged on the run)")


def in_rounds(dense: nn.Module, rounds: list[dict]) -> Pruning:
    """The pruning that removes each round's blocks (named in the network of that round) from the
    dense network in turn; its record holds every round and the removed blocks in the dense
    network's names."""
    model, gone = dense, []
    names = {b.path: b.path for b in networks.anatomy(model).blocks}  # a block's path now -> in the dense network
    for chosen in rounds:
        before = networks.anatomy(model)
        gone += [names[p] for p in chosen["removed"]]
        model = networks.without(model, chosen["removed"])
        names = dict(zip((b.path for b in networks.anatomy(model).blocks),
                         (names[b.path] for b in before.blocks if b.path not in chosen["removed"])))
    order = [b.path for b in networks.anatomy(dense).blocks]
    record = {**rounds[0], "removed": sorted(gone, key=order.index), "rounds": rounds}
    summary = "; ".join(f"block scores [{' '.join(f'{s:.3g}' for s in r['scores'])}] -> removing blocks {r['removed']}"
                        for r in rounds)
    label = f"p{len(gone)}" + (f"-{len(rounds)}rounds" if len(rounds) > 1 else "")
    steps = [r["removed"] for r in rounds]
    ties = [p for r in rounds for p in r.get("ties", [])]
    return Pruning(lambda m: _apply_removals(m, steps), record, {"blocks_removed": len(gone)}, label, "blocks.json",
                   summary, {"ties": f"index: block order chose among tied {ties}"} if ties else {})


NOTES = ("weights", "ties")  # what a record says about its choice without deciding it


def decisive(record: dict) -> dict:
    """A pruning record less its notes (the weights scored, the ties block order broke): what
    the resumable state of a ticket is keyed on, so notes added later never orphan it."""
    out = {k: v for k, v in record.items() if k not in NOTES}
    if "rounds" in out:
        out["rounds"] = [decisive(r) for r in out["rounds"]]
    return out


def _chosen(anatomy: networks.Anatomy, scores, removed: list[str]) -> dict:
    """What one scoring of the blocks chose: every removable block, its stage and score, the removed."""
    return {"removable": [b.path for b in anatomy.removable], "stage": [b.stage for b in anatomy.removable],
            "scores": scores.tolist(), "removed": removed}


def _apply_removals(model: nn.Module, steps: list[list[str]]) -> nn.Module:
    for removed in steps:
        model = networks.without(model, removed)
    return model


def filters(req: Request) -> Pruning:
    """Remove the lowest-scoring filters of the narrowable convolutions down to a filter count: by
    default the count of the layer ticket of the same density, so both tickets are equally sparse
    (``match=flops``: down to the layer ticket's FLOPs, by score per FLOP, as ``joint`` ranks)."""
    c, model = req.cfg.criterion, req.model
    if req.cfg.match == "flops":
        return _at_layer_flops(req, with_blocks=False)
    if req.cfg.target_filters is not None:
        target, layer_record = req.cfg.target_filters, None
        scores = score_filters(c.name, model, req.scoring, c, req.cfg.seed)
    else:
        block_scores, scores = score_blocks_and_filters(c.name, model, req.scoring, c, req.cfg.seed)
        anatomy = networks.anatomy(model)
        removed = select_blocks(anatomy, block_scores, req.count)
        target, layer_record = networks.count_filters(networks.without(model, removed)), _chosen(anatomy, block_scores,
                                                                                             removed)
    total = networks.count_filters(model)
    keep = select_filters(networks.narrowables(model), scores, total, target, req.cfg.scope)
    record = {"target_filters": target, "scope": req.cfg.scope, "kept": keep,
              "scores": [s.tolist() for s in scores], "layer_ticket": layer_record}
    metrics = {"target_filters": target, "filters_removed": total - target, "blocks_removed": 0}
    summary = f"keeping {target} of {total} filters ({req.cfg.scope} ranking)"
    return Pruning(lambda m: networks.narrowed(m, keep), record, metrics, f"p{req.count}-filter", "filters.json",
                   summary)


def joint(req: Request) -> Pruning:
    """Remove blocks and filters together, greedily by criterion score per FLOP saved, down to the
    forward FLOPs of the layer ticket of the same density (``lottery.pruning.joint``)."""
    return _at_layer_flops(req, with_blocks=True)


def _at_layer_flops(req: Request, with_blocks: bool) -> Pruning:
    layer = layers(replace(req, rounds=1))
    target = module_flops(layer.apply(req.model))[0]
    plan = greedy(req, target, with_blocks)
    kind = "joint" if with_blocks else "filter"
    record = {"target_flops": target, "flops": plan.flops, "steps": plan.steps, "layer_ticket": layer.record,
              "blocks_removed": plan.blocks, "filters_removed": plan.filters}
    metrics = {"target_flops": target, "blocks_removed": plan.blocks, "filters_removed": plan.filters}
    summary = (f"{plan.blocks} blocks and {plan.filters} filters removed: {plan.flops} FLOPs for a target of "
               f"{target} (the layer ticket's)")
    return Pruning(lambda m: apply(m, plan.steps), record, metrics, f"p{req.count}-{kind}", f"{kind}.json", summary)


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


def check_joint(cfg: TrialConfig, net: nn.Module, name: str, what: str = "structure=joint") -> None:
    """Units scored in the same currency (an additive criterion, summed), at initialization, on a
    family with filters; one round."""
    crit = CRITERIA[cfg.criterion.name]
    if not crit.additive or choice(cfg.criterion.aggregate) != "sum":
        raise LotteryError(f"{what} compares a block's and a filter's summed saliency: use an additive criterion "
                           f"({', '.join(additive_criteria())}) with criterion.aggregate=sum "
                           f"(got {cfg.criterion.name}, {choice(cfg.criterion.aggregate)})")
    if cfg.mode.name != "init":
        raise LotteryError(f"{what} prunes at initialization: use mode=init (got mode={cfg.mode.name})")
    networks.narrowables(net)  # one line if the family has no filters to remove


def _one_pass(check):
    """A structure that removes its units in one pass refuses rounds (layer tickets alone have them)."""

    def checked(cfg: TrialConfig, net: nn.Module, name: str) -> None:
        if cfg.prune.rounds != 1:
            raise bad_value("prune.rounds", cfg.prune.rounds, f"structure={cfg.structure} removes its units in one "
                                                              "pass; rounds are for structure=layer")
        check(cfg, net, name)

    return checked


@dataclass(frozen=True)
class Structure:
    prune: Callable[[Request], Pruning]
    check: Callable[..., None]  # (cfg, the dense network's skeleton, its name): raises LotteryError before any work


STRUCTURES: Registry[Structure] = Registry("structure")
STRUCTURES.add("layer", Structure(layers, lambda cfg, net, name: None))
STRUCTURES.add("filter", Structure(filters, _one_pass(check_filters)))
STRUCTURES.add("joint", Structure(joint, _one_pass(check_joint)))
SCOPES = ("global", "layerwise")
MATCHES = ("filters", "flops")
