"""Random baseline."""

import torch

from lottery.criteria import register, register_filters


@register("random", needs_data=False)
def random_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per block."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(model.plan.removable), generator=g, dtype=torch.float64)


@register_filters("random")
def random_filter_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per filter."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b.mid_ch, generator=g, dtype=torch.float64) for b in model.plan.blocks]
