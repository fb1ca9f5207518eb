"""What a trial removes (docs/design.md §6, §11): the contract and the registry (``base``), and one
module per structure — ``layer`` (whole blocks, at once or in rounds), ``filter`` (the
structured-LTH baseline), ``joint`` (blocks and filters together at a FLOPs target) — registered
when this package is imported.

Structures may import the criteria, ``selection``, ``lottery.measure`` (FLOPs),
``lottery.networks`` and the schema; never the experiment layer.
"""

from lottery.config import import_kinds
from lottery.pruning.structures.base import SCOPES, STRUCTURES, Pruning, Request, Structure, decisive

__all__ = ["SCOPES", "STRUCTURES", "Pruning", "Request", "Structure", "decisive"]
import_kinds(__name__, __path__)  # each module registers its structure
