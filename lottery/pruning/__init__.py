"""Pruning: the criteria that score blocks and filters (``criteria``), which blocks and filters go
(``selection``), what a trial removes (``structures``: layer, filter, and joint — blocks and
filters together at a FLOPs target), and where the ticket's weights come from (``modes``).

May import ``lottery.measure`` (FLOPs), ``lottery.training``, ``lottery.networks`` and the
schema; never the experiment layer.
"""
