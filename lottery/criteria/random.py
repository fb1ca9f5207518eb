"""Random baseline."""

import torch

from lottery import models
from lottery.criteria import register, register_filters


@register("random", needs_data=False)
def random_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per block."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(models.anatomy(model).removable), generator=g, dtype=torch.float64)


@register_filters("random")
def random_filter_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per filter."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n.width, generator=g, dtype=torch.float64) for n in models.narrowables(model)]
