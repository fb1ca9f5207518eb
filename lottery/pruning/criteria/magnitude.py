"""Weight magnitude (the paper's Appendix A.2 / Figure 3)."""

from lottery.pruning.criteria.base import IMAGES, per_weight
from lottery.pruning.criteria.weights import scored_parameters


@per_weight("l1", needs_data=False, tasks=IMAGES)
def l1(model, scoring, cfg, seed):
    """l1: absolute weight; averaged per block it grows with stage (the paper's Figure 3).

    Follows the paper's Appendix A.2; no normalisation, so later, wider stages score higher.
    """
    return {k: p.detach().abs() for k, p in scored_parameters(model, cfg.weights).items()}
