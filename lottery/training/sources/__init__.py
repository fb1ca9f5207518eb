"""The data sources, one module each (the contract and the registry: ``lottery.training.data``);
adding one is its module here (a ``Source`` subclass with its settings, under ``@SOURCES.registered``) and a
YAML file in ``conf/data/``.

Each may import ``lottery.training.data`` and the schema; sources do not import one another.
"""

from lottery.config import import_kinds

import_kinds(__name__, __path__)  # each module registers its source
