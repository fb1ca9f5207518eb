"""Importance criteria (definitions and sources: docs/design.md §3): the contract and the registry
(``base``), the scoring API every caller uses (``scoring``), the helpers criteria share
(``block_statistics``: per-block statistics over the scoring set; ``weights``: the weights scored
and their aggregation per block and filter), and one module per family of criteria, registered
when this package is imported.

Criteria may import ``lottery.networks``, ``lottery.training`` and the schema; never the
experiment layer.
"""

from lottery.config import import_kinds
from lottery.pruning.criteria.base import (
    CRITERIA,
    IMAGES,
    Criterion,
    ScoringSet,
    additive_criteria,
    check,
    filter_criteria,
    per_block,
    per_weight,
)
from lottery.pruning.criteria.scoring import score_blocks, score_blocks_and_filters, score_filters, score_weights

__all__ = ["CRITERIA", "IMAGES", "Criterion", "ScoringSet", "additive_criteria", "check", "filter_criteria",
           "per_block", "per_weight", "score_blocks", "score_blocks_and_filters", "score_filters", "score_weights"]
import_kinds(__name__, __path__)  # each module registers its criteria
