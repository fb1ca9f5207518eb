"""Per-weight scores summed (or averaged) per removable block or per filter; the weights scored."""

from __future__ import annotations

import torch
from torch import nn

from lottery import networks
from lottery.config import choice


def scored_parameters(model: nn.Module, weight_set) -> dict[str, nn.Parameter]:
    """The weights SNIP, GraSP, SynFlow and l1 score (``lottery.networks.scored_weights``):
    convolution kernels and linear and attention projections, plus normalisation affine
    parameters with ``conv_bn``; never embeddings, tokens, layer scales or biases."""
    return networks.scored_weights(model, norms=choice(weight_set) == "conv_bn")


def scored_names(model: nn.Module, weight_set) -> dict[str, list[str]]:
    """Per removable block, the names of the parameters scored in it (what blocks.json records)."""
    names = list(scored_parameters(model, weight_set))
    return {b.path: [k for k in names if k.startswith(f"{b.path}.")] for b in networks.anatomy(model).removable}


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
