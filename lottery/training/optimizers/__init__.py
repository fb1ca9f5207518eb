"""Optimizer kinds (``optim=NAME``): the contract, registry and shared state handling in ``base``,
one module per kind. Adding one is its module and a file in ``conf/optim/`` (docs/design.md §13).

May import the schema (``lottery.config``) and ``lottery.training.recipe``.
"""

from lottery.config import import_kinds
from lottery.training.optimizers.base import (OPTIMIZERS, carried_state, clip_gradients, current_lr,  # noqa: F401
                                              load_optimizer, make_optimizer, set_lr)

import_kinds(__name__, __path__)
