"""Per-block statistics over the scoring set: the loop the criteria that read a network as it is
used share, written once so a new one is its statistic alone. The network is put in eval mode and
run without gradients, chunk by chunk (``ScoringSet.chunks``); per removable block, a chunk's
statistic is averaged in float64 and weighted by the chunk's share of the scoring set, so the
result is the mean over the whole set. Reading what a block does goes through forward hooks
(``networks.block_ends``), removing it through ``networks.skipping``: every family works.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lottery import networks
from lottery.pruning.criteria.base import ScoringSet


def per_block_mean(model: nn.Module, scoring: ScoringSet,
                   per_chunk: Callable[[torch.Tensor, torch.Tensor, list[str]], Iterator[torch.Tensor]]
                   ) -> torch.Tensor:
    """``Tensor[num_removable]`` (float64): per removable block, the mean over the scoring set of
    the statistics ``per_chunk(x, y, paths)`` yields for a chunk, one per block of ``paths`` (the
    removable blocks, in forward order), each averaged over all its entries."""
    model.eval()
    paths = networks.removable_paths(model)
    totals = torch.zeros(len(paths), dtype=torch.float64)
    with torch.no_grad():
        for x, y, w in scoring.chunks():
            for i, s in enumerate(per_chunk(x, y, paths)):
                totals[i] += s.double().mean().cpu() * w
    return totals


def block_statistic(model: nn.Module, scoring: ScoringSet, stat: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    reach: Sequence[int] | None = None, last_output: str | None = None) -> torch.Tensor:
    """Per removable block, the mean over the scoring set of ``stat(x_in, x_out)``: the block's
    input and output for a chunk ((N, C, H, W) maps or (N, T, D) tokens), its result any shape
    (e.g. (N,) per example). With ``reach``, x_out is the output of removable block ``reach[i]``
    (a span of consecutive blocks from block i's input); with ``last_output``, the last block's
    output is that module's (the final norm that reads it)."""

    def per_chunk(x, y, paths):
        ends = networks.block_ends(model, x, paths + ([last_output] if last_output else []))
        if last_output:
            ends[paths[-1]] = (ends[paths[-1]][0], ends[last_output][1])
        last = range(len(paths)) if reach is None else reach
        return (stat(ends[p][0], ends[paths[j]][1]) for p, j in zip(paths, last))

    return per_block_mean(model, scoring, per_chunk)


def removal_statistic(model: nn.Module, scoring: ScoringSet,
                      stat: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
                      reference: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Per removable block, the mean over the scoring set of ``stat(out, y, ref)``: ``out`` the
    output of the network with the block skipped (its input passed on: what removing it
    computes), ``y`` the chunk's targets, ``ref`` the full network's output through
    ``reference`` (computed once per chunk; None without ``reference``)."""

    def per_chunk(x, y, paths):
        ref = None if reference is None else reference(model(x))
        for path in paths:
            with networks.skipping(model, path):
                out = model(x)
            yield stat(out, y, ref)

    return per_block_mean(model, scoring, per_chunk)
