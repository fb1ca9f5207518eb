"""The data sources, one module each (the contract, ``Arrays`` and the ``SOURCES`` registry:
``base``); adding one is its module here (a ``Source`` subclass with its settings, under
``@SOURCES.registered(Settings)``) and a YAML file in ``conf/data/``.

Each may import ``base``, the tasks (``lottery.training.tasks``), ``lottery.networks`` and the
schema; sources do not import one another.
"""

from lottery.config import import_kinds

import_kinds(__name__, __path__)  # each module registers its source
