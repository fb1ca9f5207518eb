"""Depth criteria of the language-model literature, on every family: what a block does to its
input (docs/design.md §3). Block Influence (Men et al. 2024, ShortGPT) and the angular distance
(Gromov et al. 2024) read how far a block turns its input; loss on removal (Song et al. 2024,
SLEB) reads the scoring-set loss of the network without the block. All in eval mode (the network
as it is used), over the scoring set in chunks, in float64. Each scores blocks by its paper's
statistic; where the authors' released code reads it otherwise, a setting reproduces the code. How
blocks are then chosen is lottery's for every criterion (the lowest p, or one per round with
``prune.rounds``), which differs from the papers' procedures: docs/design.md §3 says where.

A block's input and output are compared per position: the channel vector of each pixel of a
feature map (N, C, H, W), the vector of each token (N, T, D).
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lottery import networks
from lottery.config import CriterionConfig, bad_value, choice, opt
from lottery.errors import LotteryError
from lottery.pruning.criteria.base import Target, per_block
from lottery.pruning.criteria.block_statistics import block_statistic, removal_statistic

LANGUAGE = "language_modeling"


class Positions(enum.Enum):
    all = "all"  # every position: each token of a sequence, each pixel of a feature map
    last = "last"  # the last position only: a sequence's last token, as Gromov et al. read it


@dataclass
class AngularSettings(CriterionConfig):
    span: int = opt(1, "blocks the angular distance spans: from the scored block's input to the output of this many "
                       "consecutive blocks of its stage (Gromov et al.'s n; 1: the block alone)")
    positions: Positions = opt(Positions.all, "where the angle is read: all positions (every token or pixel), or "
                                              "last (a sequence's last token, Gromov et al.'s choice: model="
                                              "hf_causal_lm composes it, conf/criterion/positions/)")

    @staticmethod
    def check(cfg: "AngularSettings", target: Target) -> None:
        longest = max(collections.Counter(b.stage for b in target.anatomy.removable).values())
        if cfg.span < 1:
            raise bad_value("criterion.span", cfg.span, "a span holds at least the scored block")
        if cfg.span > longest:
            raise bad_value("criterion.span", cfg.span, f"longer than the {longest} removable blocks of "
                                                        f"{target.model}'s longest stage (a span stops at its "
                                                        f"stage's end): at most {longest}")
        if choice(cfg.positions) == "last" and target.task != LANGUAGE:
            what = "feature maps, whose last pixel" if target.anatomy.layout == "maps" else "tokens, whose last one"
            raise LotteryError(f"criterion.positions=last reads a sequence's last token, but {target.model}'s blocks "
                               f"output {what} means nothing ({target.task}): use criterion.positions=all")


@dataclass
class InfluenceSettings(CriterionConfig):
    final_norm: bool = opt(False, "the last block's output read after the language model's final norm, as "
                                  "ShortGPT's public code does (its hidden states); false: the block's own output, "
                                  "the paper's definition")

    @staticmethod
    def check(cfg: "InfluenceSettings", target: Target) -> None:
        if cfg.final_norm and target.task != LANGUAGE:
            raise LotteryError(f"criterion.final_norm=true reads a language model's final norm (ShortGPT's code), but "
                               f"{target.model} is trained for {target.task}: set criterion.final_norm=false")


@dataclass
class RemovalSettings(CriterionConfig):
    keep_ends: bool = opt(False, "never remove the network's first and last removable blocks, as SLEB's released "
                                 "code does (its barriers); false: every block is a candidate, the paper's Algorithm 1")

    @staticmethod
    def check(cfg: "RemovalSettings", target: Target) -> None:
        candidates = len(target.anatomy.removable) - 2
        if cfg.keep_ends and target.remove > candidates:
            raise LotteryError(f"criterion.keep_ends=true keeps {target.model}'s first and last removable blocks: "
                               f"{max(candidates, 0)} of its {len(target.anatomy.removable)} can go, not "
                               f"{target.remove}; lower the density or set criterion.keep_ends=false")


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


def final_norm(model, scoring) -> str:
    """The path of the normalisation that reads the last removable block's output (a language
    model's final norm): the first module called on that very tensor, found on one chunk."""
    last, seen = networks.removable_paths(model)[-1], {}

    def output(module, args, y) -> None:
        seen["out"] = y

    def reads(path, args) -> None:
        if args and "out" in seen and args[0] is seen["out"]:
            seen.setdefault("reader", path)

    hooks = [model.get_submodule(last).register_forward_hook(output)]
    hooks += [m.register_forward_pre_hook(lambda m, a, p=p: reads(p, a)) for p, m in model.named_modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(next(scoring.chunks())[0])
    finally:
        for h in hooks:
            h.remove()
    reader = seen.get("reader")
    if reader is None or "norm" not in type(model.get_submodule(reader)).__name__.lower():
        raise LotteryError(f"criterion.final_norm=true: no normalisation reads the last block's output ({last} is "
                           f"read by {reader or 'nothing'}); set criterion.final_norm=false")
    return reader


@per_block("block_influence", settings=InfluenceSettings)
def block_influence(model, scoring, cfg: InfluenceSettings, seed):
    """Block Influence (Men et al. 2024, ShortGPT): 1 - cosine of a block's input and output.

    The paper's definition: BI = 1 - E[x_in . x_out / (|x_in| |x_out|)], the expectation over
    examples and positions (every token; every pixel of a feature map); a block that leaves its
    input as it is scores 0 and goes first. ``criterion.final_norm=true`` reads the last block's
    output after the final norm, as the public code's hidden states do.
    """
    after = final_norm(model, scoring) if cfg.final_norm else None
    return 1.0 - block_statistic(model, scoring, cosines, last_output=after)


@per_block("angular_distance", settings=AngularSettings)
def angular_distance(model, scoring, cfg: AngularSettings, seed):
    """Angular distance (Gromov et al. 2024): arccos(cosine of a block's input and output) / pi.

    The paper's definition, averaged over examples at a sequence's last token
    (``criterion.positions=last``: what a language model composes; the distance of the same two
    tensors is tested equal to short-transformers', a public implementation) or over every position
    (``all``: feature maps, ViT tokens); with ``criterion.span=n`` from the block's input to the
    output of the n consecutive blocks of its stage starting there (cut short at the stage's end),
    each block scored so and the lowest p removed one by one, where Gromov et al. remove the n
    blocks of the lowest-scoring start together. 0: the block changes no direction; 1: it reverses
    its input.
    """
    last = choice(cfg.positions) == "last"

    def angle(x_in, x_out):
        cos = cosines(x_in, x_out)
        return torch.arccos((cos[:, -1:] if last else cos).clamp(-1.0, 1.0)) / math.pi

    return block_statistic(model, scoring, angle, reach=spans(model, cfg.span))


@per_block("loss_on_removal", settings=RemovalSettings)
def loss_on_removal(model, scoring, cfg: RemovalSettings, seed):
    """Loss on removal (Song et al. 2024, SLEB): the scoring-set loss without the block.

    The paper's greedy criterion: the mean cross-entropy (the task's: per image, or per next
    token) of the network with the block skipped (its input passed on), in float64; the block
    whose removal costs least goes first. With prune.rounds=0 the blocks go one per round, each
    round scoring the network left, as SLEB removes them. ``criterion.keep_ends=true`` scores the
    first and last removable blocks the largest float, so they are never chosen, as SLEB's code.
    """
    scores = removal_statistic(model, scoring, lambda out, y, _: scoring.task.loss(out.double(), y))
    if cfg.keep_ends:
        scores[[0, -1]] = torch.finfo(scores.dtype).max
    return scores
