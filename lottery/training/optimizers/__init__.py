"""Optimizer kinds (``optim=NAME``): the contract, registry and shared state handling in ``base``,
one module per kind. Adding one is its module and a file in ``conf/optim/`` (docs/design.md §13).

May import the schema (``lottery.config``) and ``lottery.training.recipe``.
"""

from lottery.config import import_kinds
from lottery.training.optimizers.base import (OPTIMIZERS, carried_state, current_lr, load_optimizer,  # noqa: F401
                                              make_optimizer, set_lr)

import_kinds(__name__, __path__)
