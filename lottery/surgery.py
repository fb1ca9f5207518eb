"""Physical removal of residual blocks: a new, shallower network with the kept weights copied."""

from __future__ import annotations

import re

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
