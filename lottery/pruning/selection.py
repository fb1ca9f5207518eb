"""Which blocks and filters a ticket loses: the lowest-scoring ones, never emptying a stage and
never a convolution's last filter. Building the physically smaller network is the model
family's job (``lottery.networks.without`` / ``narrowed``)."""

from __future__ import annotations

import math

import torch

from lottery.errors import LotteryError
from lottery.networks import Anatomy, Narrowable


def select_blocks(anatomy: Anatomy, scores: torch.Tensor, count: int) -> list[str]:
    """The paths of the ``count`` lowest-scoring removable blocks, in forward order, never
    emptying a stage.

    ``scores`` has one entry per removable block (in ``anatomy.removable`` order). Ties break by
    block order, so the choice is deterministic.
    """
    removable = anatomy.removable
    if scores.numel() != len(removable):
        raise ValueError(f"expected {len(removable)} scores, got {scores.numel()}")
    if count > anatomy.max_removable:
        raise LotteryError(
            f"cannot remove {count} blocks: at most {anatomy.max_removable} of this network's "
            f"{len(removable)} removable blocks can go while every stage keeps one"
        )
    left = anatomy.stage_sizes()
    order = sorted(range(len(removable)), key=lambda k: (float(scores[k]), k))
    chosen = []
    for k in order:
        if len(chosen) == count:
            break
        if left[removable[k].stage] > 1:
            left[removable[k].stage] -= 1
            chosen.append(k)
    return [removable[k].path for k in sorted(chosen)]


def tied_blocks(anatomy: Anatomy, scores: torch.Tensor, chosen: list[str]) -> list[str]:
    """The removable blocks kept although their score equals a chosen block's, and that could have
    gone in its place (the same stage, or a stage that can spare one more): when there is any,
    block order, not the criterion, chose between them. Scores tie when equal to a relative 1e-9
    (exact zeros included)."""
    removable = anatomy.removable
    at = {b.path: k for k, b in enumerate(removable)}
    left = anatomy.stage_sizes()
    for p in chosen:
        left[removable[at[p]].stage] -= 1

    def swappable(b, c) -> bool:
        return math.isclose(float(scores[at[b.path]]), float(scores[at[c]]), rel_tol=1e-9) and (
            b.stage == removable[at[c]].stage or left[b.stage] > 1)

    return [b.path for b in removable if b.path not in chosen and any(swappable(b, c) for c in chosen)]


def filter_floor(total: int, narrowables: list[Narrowable]) -> int:
    """Fewest filters a filter ticket can have: one kept per narrowable convolution."""
    return total - sum(n.width - 1 for n in narrowables)


def check_filter_target(total: int, narrowables: list[Narrowable], target: int, what: str,
                        network: str = "this network") -> None:
    """A filter count is reachable from ``total`` down to the floor of one filter per convolution."""
    floor = filter_floor(total, narrowables)
    if not floor <= target <= total:
        raise LotteryError(f"{what} is out of reach: {network} has {total} filters and keeps at least "
                           f"{floor} (one per convolution)")


def select_filters(narrowables: list[Narrowable], scores: list[torch.Tensor], total: int, target: int,
                   scope: str = "global") -> dict[str, list[int]]:
    """The filters to keep, per narrowable convolution, so that a network of ``total`` filters has
    ``target``.

    Each narrowable convolution's output channels couple to nothing but its norm and the next
    convolution's input, and go one filter at a time, so every count down to the floor of one
    filter per convolution is reachable. ``global`` removes the lowest scores over the whole
    network; ``layerwise`` removes the same fraction from every convolution.
    """
    check_filter_target(total, narrowables, target, f"a target of {target} filters")
    remove = total - target
    sizes = [n.width for n in narrowables]
    if scope == "layerwise":
        quotas = _proportional(remove, sizes)
    else:
        flat = sorted((float(s), b, c) for b, conv in enumerate(scores) for c, s in enumerate(conv))
        quotas, left = [0] * len(sizes), list(sizes)
        for _, b, _ in flat:
            if sum(quotas) == remove:
                break
            if left[b] > 1:
                left[b] -= 1
                quotas[b] += 1
    keep = {}
    for n, s, q in zip(narrowables, scores, quotas):
        order = sorted(range(len(s)), key=lambda c: (float(s[c]), c))
        keep[n.conv] = sorted(order[q:])
    return keep


def _proportional(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over layers in proportion to their sizes (largest remainder), each < size."""
    whole = sum(sizes)
    raw = [total * s / whole for s in sizes]
    quotas = [min(int(r), s - 1) for r, s in zip(raw, sizes)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    while sum(quotas) < total:
        for i in by_remainder:
            if sum(quotas) < total and quotas[i] < sizes[i] - 1:
                quotas[i] += 1
    return quotas
