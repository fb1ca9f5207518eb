"""Per-weight scores summed (or averaged) per removable block or per filter; the weights scored."""

from __future__ import annotations

import torch
from torch import nn

from lottery import networks
from lottery.config import choice

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def scored_parameters(model: nn.Module, weight_set) -> dict[str, nn.Parameter]:
    """The weight tensors SNIP and GraSP score: every parameter of two or more dimensions
    (convolution kernels, linear and attention projections), plus normalisation affine
    parameters with ``conv_bn``; biases are never scored."""
    norms = set()
    if choice(weight_set) == "conv_bn":
        norms = {f"{n}.{k}".lstrip(".") for n, m in model.named_modules() if isinstance(m, NORMS)
                 for k, _ in m.named_parameters(recurse=False)}
    return {k: p for k, p in model.named_parameters() if p.dim() >= 2 or k in norms}


def aggregate_blocks(model: nn.Module, per_weight: dict[str, torch.Tensor], aggregate) -> torch.Tensor:
    """One number per removable block from per-weight scores keyed by parameter name."""
    how = choice(aggregate)
    scores = []
    for block in networks.anatomy(model).removable:
        prefix = f"{block.path}."
        flat = torch.cat([s.flatten() for k, s in per_weight.items() if k.startswith(prefix)])
        scores.append(flat.sum() if how == "sum" else flat.mean())
    return torch.stack(scores)


def aggregate_filters(model: nn.Module, per_weight: dict[str, torch.Tensor], aggregate) -> list[torch.Tensor]:
    """For every narrowable convolution, one number per output channel (that filter's own
    weights: channels that couple only to its norm and the next convolution's input)."""
    how = choice(aggregate)
    out = []
    for n in networks.narrowables(model):
        s = per_weight[f"{n.conv}.weight"].flatten(1)
        out.append(s.sum(1) if how == "sum" else s.mean(1))
    return out
