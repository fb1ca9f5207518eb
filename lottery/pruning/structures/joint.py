"""``structure=joint``: units (whole blocks and single filters) removed together down to the
forward FLOPs of the layer ticket of the same density, greedily by criterion score per FLOP saved:
the paper's open question, blocks and filters pruned together at initialization; filter tickets
matched on FLOPs (``match=flops``) are the same search without blocks.

Additive criteria (SNIP, GraSP, SynFlow) sum per-weight saliencies, so a block and a filter are
scored in the same units: a unit's score is the sum over every weight that goes with it (a
filter: its kernel, its norm's affine entries when scored, and the next convolution's input
channel). FLOPs come from ``torch.utils.flop_counter`` per module; a convolution's cost is
bilinear in its input and output channels, so each removed filter's saving is exact. The unit
with the lowest score per FLOP goes first, as long as the network stays at or above the target
less the cheapest filter; the network is re-scored after each block removal. It ends within one
filter's FLOPs of the target, and never empties a stage or a convolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import nn

from lottery import networks
from lottery.config import TrialConfig, choice
from lottery.errors import LotteryError
from lottery.measure.costs import counted
from lottery.pruning.criteria import CRITERIA, additive_criteria, score_weights
from lottery.pruning.modes import MODES
from lottery.pruning.structures.base import STRUCTURES, Pruning, Request, Structure
from lottery.pruning.structures.layer import layers

log = logging.getLogger("lottery")


@dataclass
class Edits:
    """The edits that build the ticket from the dense network, in order, and what they removed."""

    steps: list[dict]  # {"narrow": {conv: kept channels}} or {"remove": [block paths]}, in the network of the time
    flops: int
    blocks: int
    filters: int


def apply(model: nn.Module, steps: list[dict]) -> nn.Module:
    for step in steps:
        model = networks.narrowed(model, step["narrow"]) if "narrow" in step else networks.without(model, step["remove"])
    return model


def module_flops(model: nn.Module) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of the network for one image, and of each module by its path."""
    counter = counted(model)
    per = {name.partition(".")[2]: sum(v.values()) for name, v in counter.get_flop_counts().items() if "." in name}
    return int(counter.get_total_flops()), per


class Units:
    """The removable units of one physical network at its current scores, and what removing each
    saves, kept exact while filters go (until the next block removal rebuilds the network)."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor], with_blocks: bool):
        self.flops, per = module_flops(model)
        self.anatomy = networks.anatomy(model)
        self.convs = {n.conv: n for n in networks.narrowables(model)}
        self.cost = {p: per.get(p, 0) for p in {*self.convs, *(n.next for n in self.convs.values())}}
        self.block_cost = {b.path: per.get(b.path, 0) for b in self.anatomy.removable} if with_blocks else {}
        self.full = {p: tuple(model.get_submodule(p).weight.shape[1::-1]) for p in self.cost}  # (in, out) as built
        self.eff = dict(self.full)  # (in, out) channels still kept
        self.weights = weights
        self.previous = {n.next: c for c, n in self.convs.items()}  # conv -> the narrowable conv feeding it
        # A filter's score: its kernel (and bias), its norm's scored entries, the next conv's input channel.
        self.score = {}
        for conv, n in self.convs.items():
            own = sum(weights[k].flatten(1).sum(1) if weights[k].dim() > 1 else weights[k]
                      for k in (f"{conv}.weight", f"{conv}.bias", f"{n.norm}.weight", f"{n.norm}.bias") if k in weights)
            self.score[conv] = own + weights[f"{n.next}.weight"].transpose(0, 1).flatten(1).sum(1)
        self.block = {b: float(sum(v.sum() for k, v in weights.items() if k.startswith(f"{b}.")))
                      for b in self.block_cost}
        self.gone = {c: torch.zeros(n.width, dtype=torch.bool) for c, n in self.convs.items()}
        self.left = self.anatomy.stage_sizes()

    def filter_saving(self, conv: str) -> float:
        """FLOPs one more filter of ``conv`` saves: its own output channel and the next conv's input."""
        n = self.convs[conv]
        (i, o), (fi, fo) = self.eff[conv], self.full[conv]
        (ni, no), (nfi, nfo) = self.eff[n.next], self.full[n.next]
        return self.cost[conv] * (i / fi) / fo + self.cost[n.next] * (no / nfo) / nfi

    def block_saving(self, path: str) -> float:
        """FLOPs the block still costs: as measured, less what its removed filters already saved."""
        convs = {p for c, n in self.convs.items() if n.block == path for p in (c, n.next)}
        saved = sum(self.cost[p] * (1 - (self.eff[p][0] * self.eff[p][1]) / (self.full[p][0] * self.full[p][1]))
                    for p in convs)
        return self.block_cost[path] - saved

    def remove_filter(self, conv: str, c: int) -> None:
        n = self.convs[conv]
        self.flops -= self.filter_saving(conv)
        if n.block in self.block:
            self.block[n.block] -= float(self.score[conv][c])
        self.gone[conv][c] = True
        if n.next in self.convs:  # the next conv's filters lose this input channel
            self.score[n.next] -= self.weights[f"{n.next}.weight"][:, c].flatten(1).sum(1)
        if conv in self.previous:  # the feeding conv's filters lose this output row of their next conv
            self.score[self.previous[conv]] -= self.weights[f"{conv}.weight"][c].flatten(1).sum(1)
        self.eff[conv] = (self.eff[conv][0], self.eff[conv][1] - 1)
        self.eff[n.next] = (self.eff[n.next][0] - 1, self.eff[n.next][1])

    def narrowing(self) -> dict[str, list[int]]:
        return {c: (~g).nonzero().flatten().tolist() for c, g in self.gone.items() if g.any()}

    def best(self, target: float) -> tuple[str, str, int] | None:
        """The eligible unit with the lowest score per FLOP saved: ("filter", conv, channel) or
        ("block", path, -1); None when no unit can go without passing below the target less the
        cheapest filter."""
        savings = {c: self.filter_saving(c) for c, g in self.gone.items() if (~g).sum() > 1}
        if not savings:
            return None
        floor = target - min(savings.values())
        ranked = []
        for conv, saving in savings.items():
            if self.flops - saving >= floor:
                ratio = torch.where(self.gone[conv], torch.inf, self.score[conv] / saving)
                c = int(ratio.argmin())
                ranked.append((float(ratio[c]), "filter", conv, c))
        for b in self.anatomy.removable if self.block_cost else ():
            saving = self.block_saving(b.path)
            if self.left[b.stage] > 1 and saving > 0 and self.flops - saving >= floor:
                ranked.append((self.block[b.path] / saving, "block", b.path, -1))
        if not ranked:
            return None
        _, kind, where, channel = min(ranked)
        return kind, where, channel


def greedy(req: Request, target: float, with_blocks: bool) -> Edits:
    """Remove units of ``req.model`` down to ``target`` FLOPs."""
    c = req.cfg.criterion
    net, steps, blocks, filters = req.model, [], 0, 0
    while True:
        units = Units(net, score_weights(c.name, net, req.scoring, c, req.cfg.seed), with_blocks)
        while (chosen := units.best(target)) is not None and chosen[0] == "filter":
            units.remove_filter(chosen[1], chosen[2])
            filters += 1
        if units.narrowing():
            steps.append({"narrow": units.narrowing()})
            net = networks.narrowed(net, units.narrowing())
        if chosen is None:
            return Edits(steps, module_flops(net)[0], blocks, filters)
        steps.append({"remove": [chosen[1]]})
        net = networks.without(net, [chosen[1]])
        blocks += 1
        log.info("joint: removed block %s (%d filters so far); re-scoring", chosen[1], filters)


def joint(req: Request) -> Pruning:
    """Remove blocks and filters together, greedily by criterion score per FLOP saved, down to the
    forward FLOPs of the layer ticket of the same density."""
    return at_layer_flops(req, with_blocks=True)


def at_layer_flops(req: Request, with_blocks: bool) -> Pruning:
    """Units removed down to the layer ticket's forward FLOPs: blocks and filters, or filters alone."""
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


def check_joint(cfg: TrialConfig, net: nn.Module, name: str, what: str = "structure=joint") -> None:
    """Units scored in the same currency (an additive criterion, summed), at initialization, on a
    family with filters."""
    crit = CRITERIA[cfg.criterion.name]
    if not crit.additive or choice(cfg.criterion.aggregate) != "sum":
        raise LotteryError(f"{what} compares a block's and a filter's summed saliency: use an additive criterion "
                           f"({', '.join(additive_criteria())}) with criterion.aggregate=sum "
                           f"(got {cfg.criterion.name}, {choice(cfg.criterion.aggregate)})")
    if not MODES[cfg.mode.name].scores_at_init:
        at_init = ", ".join(f"mode={n}" for n, m in MODES.items() if m.scores_at_init)
        raise LotteryError(f"{what} prunes at initialization: use {at_init} (got mode={cfg.mode.name})")
    networks.narrowables(net)  # one line if the family has no filters to remove


@STRUCTURES.registered()
class Joint(Structure):
    name = "joint"

    def prune(self, req: Request) -> Pruning:
        return joint(req)

    def check(self, cfg: TrialConfig, net: nn.Module, name: str) -> None:
        super().check(cfg, net, name)
        check_joint(cfg, net, name)
