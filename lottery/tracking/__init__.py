"""Bookkeeping: MLflow runs that never stop the work (``runs``), results MLflow missed, kept and
logged once later (``outbox``), a trained ticket as a file and back (``tickets``), and the
content-addressed store of dense networks (``store``).

May import ``lottery.training``, ``lottery.networks`` and the schema; not pruning, measurement
or the experiment.
"""
