"""Per-weight scores summed (or averaged) per removable block or per filter; the weights scored."""

from __future__ import annotations

import torch
from torch import nn

from lottery.config import choice
from lottery.models import ResNet


def scored_parameters(model: ResNet, weight_set) -> dict[str, nn.Parameter]:
    """Convolution and linear weights (the set SNIP and GraSP score), plus BN affine if asked."""
    with_bn = choice(weight_set) == "conv_bn"
    out = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[f"{mod_name}.weight"] = m.weight
        elif with_bn and isinstance(m, nn.BatchNorm2d):
            out[f"{mod_name}.weight"] = m.weight
            out[f"{mod_name}.bias"] = m.bias
    return out


def per_block(model: ResNet, per_weight: dict[str, torch.Tensor], aggregate) -> torch.Tensor:
    """One number per removable block from per-weight scores keyed by parameter name."""
    how = choice(aggregate)
    scores = []
    for i in model.plan.removable:
        prefix = f"blocks.{i}."
        parts = [s.flatten() for k, s in per_weight.items() if k.startswith(prefix)]
        flat = torch.cat(parts)
        scores.append(flat.sum() if how == "sum" else flat.mean())
    return torch.stack(scores)


def per_filter(model: ResNet, per_weight: dict[str, torch.Tensor], aggregate) -> list[torch.Tensor]:
    """For every block, one number per output channel of its first convolution (that filter's
    own weights: the channels that couple only to its BN and the second convolution's input)."""
    how = choice(aggregate)
    out = []
    for i in range(len(model.plan.blocks)):
        s = per_weight[f"blocks.{i}.conv1.weight"].flatten(1)
        out.append(s.sum(1) if how == "sum" else s.mean(1))
    return out
