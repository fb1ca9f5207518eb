"""Which weights a per-weight criterion scores, chosen by the module that holds them (never by a
tensor's rank): convolution kernels, linear and attention projections, and with ``norms`` the
normalisation's affine parameters; never embeddings, class or position tokens, layer scales or
biases (docs/design.md §3), nor a projection tied to an embedding (GPT-2's head). And the counts
of filters and parameters the costs report.
"""

from __future__ import annotations

from torch import nn

from lottery.networks.anatomy import family_of

# The weights of torch's own modules that a convolution or projection holds (docs/design.md §3).
PROJECTIONS: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("weight",), nn.Linear: ("weight",), nn.Bilinear: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def scored_weights(model: nn.Module, norms: bool) -> dict[str, nn.Parameter]:
    """The parameters a per-weight criterion scores, by name, chosen by the module that holds
    them: convolution kernels and linear and attention projections (torch's and those the
    family declares), plus with ``norms`` the normalisation layers' affine parameters. A tied
    parameter is scored once, under its first name, and never when it is also an embedding's
    weight (a head tied to the token embedding): embeddings are not scored, whatever reaches them."""
    types = {**family_of(model).weight_types(), **PROJECTIONS}  # a family's own types first: they may subclass torch's
    seen = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    out = {}
    for name, module in model.named_modules():
        own = next((keys for t, keys in types.items() if isinstance(module, t)), ())
        if norms and isinstance(module, NORMS):
            own = ("weight", "bias")
        for key in own:
            p = getattr(module, key, None)
            if isinstance(p, nn.Parameter) and id(p) not in seen:
                seen.add(id(p))
                out[f"{name}.{key}".lstrip(".")] = p
    return out


def count_filters(model: nn.Module) -> int:
    """Total output channels over every convolution (stem, block convs, projections)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
