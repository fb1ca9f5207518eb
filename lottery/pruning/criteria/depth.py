"""Depth criteria of the language-model literature, on every family: what a block does to its
input (docs/design.md §3). Block Influence (Men et al. 2024, ShortGPT) and the angular distance
(Gromov et al. 2024) read how far a block turns its input; loss on removal (Song et al. 2024,
SLEB) reads the scoring-set loss of the network without the block. All in eval mode (the network
as it is used), over the scoring set in chunks, in float64.

A block's input and output are compared per position: the channel vector of each pixel of a
feature map (N, C, H, W), the vector of each token (N, T, D).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lottery import networks
from lottery.config import CriterionConfig, choice, opt
from lottery.pruning.criteria import per_block


class Positions(enum.Enum):
    all = "all"  # every position: each token of a sequence, each pixel of a feature map
    last = "last"  # the last position only: a sequence's last token, as Gromov et al. read it


@dataclass
class AngularSettings(CriterionConfig):
    span: int = opt(1, "blocks the angular distance spans: from the scored block's input to the output of this many "
                       "consecutive blocks of its stage (Gromov et al.'s n; 1: the block alone)")
    positions: Positions = opt(Positions.all, "where the angle is read: all positions (every token or pixel), or "
                                              "last (a sequence's last token, Gromov et al.'s choice)")


def cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, positions): the cosine of input and output at every position of each example."""
    features = 1 if x.dim() == 4 else -1  # maps: channels; tokens: the model dimension
    return F.cosine_similarity(x.double(), y.double(), dim=features, eps=1e-12).flatten(1)


def _ends(model, scoring, span: int, statistic, last_only: bool = False) -> torch.Tensor:
    """Mean over the scoring set of ``statistic(cosines)`` between each removable block's input
    and the output of the ``span`` consecutive blocks of its stage starting there (at every
    position, or at the last one only)."""
    model.eval()
    removable = networks.anatomy(model).removable
    last = []  # per block: the last of the ``span`` consecutive blocks of its stage starting there
    for i, b in enumerate(removable):
        j = i
        while j + 1 < min(i + span, len(removable)) and removable[j + 1].stage == b.stage:
            j += 1
        last.append(j)
    totals = torch.zeros(len(removable), dtype=torch.float64)
    for x, _, w in scoring.chunks():
        ends = networks.block_ends(model, x, [b.path for b in removable])
        for i, b in enumerate(removable):
            cos = cosines(ends[b.path][0], ends[removable[last[i]].path][1])
            cos = cos[:, -1:] if last_only else cos
            totals[i] += statistic(cos).mean().cpu() * w
    return totals


@per_block("block_influence")
def block_influence(model, scoring, cfg, seed):
    """Block Influence (Men et al. 2024, ShortGPT): 1 - cosine of a block's input and output.

    Follows the paper's definition: BI = 1 - E[x_in . x_out / (|x_in| |x_out|)], the expectation
    over examples and positions (every token; every pixel of a feature map); a block that leaves
    its input as it is scores 0 and goes first.
    """
    return 1.0 - _ends(model, scoring, 1, lambda cos: cos)


@per_block("angular_distance", settings=AngularSettings)
def angular_distance(model, scoring, cfg: AngularSettings, seed):
    """Angular distance (Gromov et al. 2024): arccos(cosine of a block's input and output) / pi.

    Follows the paper's definition, averaged over examples and positions, or with
    ``criterion.positions=last`` at a sequence's last token only, as the paper reads it (and as
    short-transformers, a public implementation, does by default: tested equal); with
    ``criterion.span=n`` from the block's input to the output of the n consecutive blocks of its
    stage starting there. 0: the block changes no direction; 1: it reverses its input.
    """
    return _ends(model, scoring, cfg.span, lambda cos: torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi,
                 last_only=choice(cfg.positions) == "last")


@per_block("loss_on_removal")
def loss_on_removal(model, scoring, cfg, seed):
    """Loss on removal (Song et al. 2024, SLEB): the scoring-set loss without the block.

    Follows the paper's greedy criterion: the mean cross-entropy (the task's: per image, or per
    next token) of the network with the block
    skipped (its input passed on), in float64; the block whose removal costs least goes first.
    With prune.rounds=0 the blocks go one per round, each round scoring the network left, as SLEB
    removes them.
    """
    model.eval()
    paths = [b.path for b in networks.anatomy(model).removable]
    totals = torch.zeros(len(paths), dtype=torch.float64)
    with torch.no_grad():
        for x, y, w in scoring.chunks():
            for k, path in enumerate(paths):
                with networks.skipping(model, path):
                    totals[k] += scoring.task.loss(model(x).double(), y).cpu() * w
    return totals
