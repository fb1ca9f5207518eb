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
from lottery.pruning.criteria.base import per_block
from lottery.pruning.criteria.block_statistics import block_statistic, removal_statistic


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


def spans(model, span: int) -> list[int]:
    """Per removable block, the index of the last of the ``span`` consecutive removable blocks of
    its stage starting there (cut short at the stage's end)."""
    removable = networks.anatomy(model).removable
    last = []
    for i, b in enumerate(removable):
        j = i
        while j + 1 < min(i + span, len(removable)) and removable[j + 1].stage == b.stage:
            j += 1
        last.append(j)
    return last


@per_block("block_influence")
def block_influence(model, scoring, cfg, seed):
    """Block Influence (Men et al. 2024, ShortGPT): 1 - cosine of a block's input and output.

    Follows the paper's definition: BI = 1 - E[x_in . x_out / (|x_in| |x_out|)], the expectation
    over examples and positions (every token; every pixel of a feature map); a block that leaves
    its input as it is scores 0 and goes first.
    """
    return 1.0 - block_statistic(model, scoring, cosines)


@per_block("angular_distance", settings=AngularSettings)
def angular_distance(model, scoring, cfg: AngularSettings, seed):
    """Angular distance (Gromov et al. 2024): arccos(cosine of a block's input and output) / pi.

    Follows the paper's definition, averaged over examples and positions, or with
    ``criterion.positions=last`` at a sequence's last token only, as the paper reads it (and as
    short-transformers, a public implementation, does by default: tested equal); with
    ``criterion.span=n`` from the block's input to the output of the n consecutive blocks of its
    stage starting there. 0: the block changes no direction; 1: it reverses its input.
    """
    last = choice(cfg.positions) == "last"

    def angle(x_in, x_out):
        cos = cosines(x_in, x_out)
        return torch.arccos((cos[:, -1:] if last else cos).clamp(-1.0, 1.0)) / math.pi

    return block_statistic(model, scoring, angle, reach=spans(model, cfg.span))


@per_block("loss_on_removal")
def loss_on_removal(model, scoring, cfg, seed):
    """Loss on removal (Song et al. 2024, SLEB): the scoring-set loss without the block.

    Follows the paper's greedy criterion: the mean cross-entropy (the task's: per image, or per
    next token) of the network with the block
    skipped (its input passed on), in float64; the block whose removal costs least goes first.
    With prune.rounds=0 the blocks go one per round, each round scoring the network left, as SLEB
    removes them.
    """
    return removal_statistic(model, scoring, lambda out, y, _: scoring.task.loss(out.double(), y))
