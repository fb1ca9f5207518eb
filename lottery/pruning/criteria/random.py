"""Random baseline."""

import torch

from lottery import networks
from lottery.pruning.criteria.base import per_block


def random_filter_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per filter."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n.width, generator=g, dtype=torch.float64) for n in networks.narrowables(model)]


@per_block("random", needs_data=False, filters=random_filter_scores)
def random_scores(model, scoring, cfg, seed):
    """A seeded uniform draw per block."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(len(networks.anatomy(model).removable), generator=g, dtype=torch.float64)
