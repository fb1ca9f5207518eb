"""Physical removal of residual blocks: a new, shallower network with the kept weights copied."""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from lottery.errors import LotteryError
from lottery.models import Plan, ResNet, build


def select_blocks(plan: Plan, scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` lowest-scoring removable blocks, never emptying a stage.

    ``scores`` has one entry per removable block (in ``plan.removable`` order). Ties break by
    block index, so the choice is deterministic.
    """
    removable = plan.removable
    if scores.numel() != len(removable):
        raise ValueError(f"expected {len(removable)} scores, got {scores.numel()}")
    if count > plan.max_removable:
        raise LotteryError(
            f"cannot remove {count} blocks: at most {plan.max_removable} of this network's "
            f"{len(removable)} removable blocks can go while every stage keeps one"
        )
    left = plan.stage_sizes()
    order = sorted(range(len(removable)), key=lambda k: (float(scores[k]), removable[k]))
    chosen = []
    for k in order:
        if len(chosen) == count:
            break
        stage = plan.blocks[removable[k]].stage
        if left[stage] > 1:
            left[stage] -= 1
            chosen.append(removable[k])
    return sorted(chosen)


def remove_blocks(model: ResNet, blocks) -> ResNet:
    """A new ResNet without ``blocks`` (indices into ``model.plan.blocks``).

    Every kept parameter and BN buffer is copied; the result is on the model's device and dtype.
    """
    drop = sorted(set(blocks))
    not_removable = [i for i in drop if i not in model.plan.removable]
    if not_removable:
        raise ValueError(f"blocks {not_removable} change shape and cannot be removed")
    new_index = {}
    for old in range(len(model.plan.blocks)):
        if old not in drop:
            new_index[old] = len(new_index)

    def rename(key: str) -> str | None:
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if not m:
            return key
        old = int(m.group(1))
        return None if old in drop else f"blocks.{new_index[old]}.{m.group(2)}"

    state = {}
    for key, value in model.state_dict().items():
        new_key = rename(key)
        if new_key is not None:
            state[new_key] = value.detach().clone()
    param = next(model.parameters())
    ticket = build(model.plan.without(drop)).to(device=param.device, dtype=param.dtype)
    ticket.load_state_dict(state, strict=True)
    if model.training is False:
        ticket.eval()
    return ticket


def filter_floor(plan: Plan) -> int:
    """Fewest filters a filter ticket can have: one kept per prunable convolution."""
    return plan_filters(plan) - sum(b.mid_ch - 1 for b in plan.blocks)


def plan_filters(plan: Plan) -> int:
    """Filter count (every convolution's output channels) of the network a plan builds."""
    projections = sum(b.out_ch for b in plan.blocks if not b.removable and plan.shortcut == "B")
    return plan.stem_ch + sum(b.mid_ch + b.out_ch for b in plan.blocks) + projections


def check_filter_target(plan: Plan, target: int, what: str, network: str = "this network") -> None:
    """A filter count is reachable from ``plan`` down to the floor of one filter per convolution."""
    total, floor = plan_filters(plan), filter_floor(plan)
    if not floor <= target <= total:
        raise LotteryError(f"{what} is out of reach: {network} has {total} filters and keeps at least "
                           f"{floor} (one per convolution)")


def select_filters(plan: Plan, scores: list[torch.Tensor], target: int, scope: str = "global") -> dict[int, list[int]]:
    """The filters to keep, per block, so that the network has ``target`` filters.

    Only the first convolution of each block is pruned (its output channels couple to nothing
    but its BN and the second convolution's input), one filter at a time, so every count down to
    the floor of one filter per convolution is reachable. ``global`` removes the lowest scores
    over the whole network; ``layerwise`` removes the same fraction from every convolution.
    """
    check_filter_target(plan, target, f"a target of {target} filters")
    remove = plan_filters(plan) - target
    sizes = [b.mid_ch for b in plan.blocks]
    if scope == "layerwise":
        quotas = _proportional(remove, sizes)
    else:
        flat = sorted((float(s), b, c) for b, block in enumerate(scores) for c, s in enumerate(block))
        quotas, left = [0] * len(sizes), list(sizes)
        for _, b, _ in flat:
            if sum(quotas) == remove:
                break
            if left[b] > 1:
                left[b] -= 1
                quotas[b] += 1
    keep = {}
    for b, (s, q) in enumerate(zip(scores, quotas)):
        order = sorted(range(len(s)), key=lambda c: (float(s[c]), c))
        keep[b] = sorted(order[q:])
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


def narrowed(plan: Plan, keep: dict[int, list[int]]) -> Plan:
    """The plan with each listed block's first convolution cut to the kept channels."""
    return replace(plan, blocks=tuple(replace(b, mid_ch=len(keep[i])) if i in keep else b
                                      for i, b in enumerate(plan.blocks)))


def remove_filters(model: ResNet, keep: dict[int, list[int]]) -> ResNet:
    """A new, narrower ResNet keeping only the listed conv1 output channels of each block: conv1
    and bn1 lose the channels, conv2 the matching input channels; all else is copied."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, channels in keep.items():
        idx = torch.as_tensor(channels, dtype=torch.long, device=state[f"blocks.{i}.conv1.weight"].device)
        for name in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
            key = f"blocks.{i}.{name}"
            state[key] = state[key].index_select(0, idx)
        key = f"blocks.{i}.conv2.weight"
        state[key] = state[key].index_select(1, idx)
    param = next(model.parameters())
    ticket = build(narrowed(model.plan, keep)).to(device=param.device, dtype=param.dtype)
    ticket.load_state_dict(state, strict=True)
    if not model.training:
        ticket.eval()
    return ticket
