"""Modes: how a ticket gets its weights (docs/design.md §4). The contract and the registry are in
``base``; each mode is a module of its own, registered when this package is imported.

Imports the schema, ``lottery.networks`` and ``lottery.training`` only."""

from lottery.config import import_kinds
from lottery.pruning.modes.base import MODES, Mode, Origin, blocks_to_remove, resolved_rounds

__all__ = ["MODES", "Mode", "Origin", "blocks_to_remove", "resolved_rounds"]
import_kinds(__name__, __path__)  # each mode's module registers it
