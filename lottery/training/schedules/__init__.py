"""Learning-rate schedule kinds (``schedule=NAME``): the contract, registry, warm-up and the rate of
every step (``lr_at``) in ``base``, one module per kind. Adding one is its module and a file in
``conf/schedule/`` (docs/design.md §13).

May import the schema (``lottery.config``) and ``lottery.training.recipe``.
"""

from lottery.config import import_kinds
from lottery.training.schedules.base import SCHEDULES, in_warmup, lr_at, warmup_epochs  # noqa: F401

import_kinds(__name__, __path__)
