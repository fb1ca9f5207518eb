"""Training: what the data means (``tasks``: classification, language modelling), the data
(its ``sources``, the device-resident ``data`` set, its epoch plans and ``batches``), the training loop
(``trainer``) with its learning-rate ``schedule``, ``optimizer``, resumable state and rewind
points (``checkpoints``), compiled network (``compiling``) and CUDA-graph step (``capture``), and
where and how it computes (``devices``).

May import ``lottery.networks`` and the schema (``lottery.config``, ``errors``, ``files``).
"""

from lottery.training import optimizers, schedules, sources  # noqa: F401 - the kinds register themselves
