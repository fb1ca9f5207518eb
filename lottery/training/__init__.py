"""Training: what the data means (``tasks``: classification, language modelling), the data
(sources, device-resident splits, batches: ``data``), the trainer
(resumable, eager / compiled / CUDA graph: ``trainer``) and where and how it computes
(``devices``).

May import ``lottery.networks`` and the schema (``lottery.config``, ``errors``, ``files``).
"""

from lottery.training import sources  # noqa: F401 - the data sources register themselves
