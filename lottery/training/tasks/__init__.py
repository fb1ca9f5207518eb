"""The tasks, one module each (the contract, the registry and the helpers they share: ``base``): what a
source's data means (docs/design.md §9.1). Adding one is its module here (a ``Task`` subclass under
``@TASKS.registered()``) and a source whose ``task`` names it.

Each may import ``base``, the schema and ``lottery.errors``; tasks do not import one another.
"""

from lottery.config import import_kinds

import_kinds(__name__, __path__)  # each module registers its task
