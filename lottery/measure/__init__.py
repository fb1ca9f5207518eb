"""Measurement of networks and of results: what a network costs (``costs``: FLOPs, memory,
throughput, latency), how alike two compute (``similarity``: CKA), energy and CO2 (``carbon``),
accuracy under shift (``robustness``, ``corruptions``), one trial's network measured
(``trial_costs``), the table of metrics and how dense and ticket compare (``metrics``), the
statistics verdicts rest on (``stats``), and the one plotting set-up every figure uses
(``plotting``).

May import ``lottery.training``, ``lottery.networks`` and the schema.
"""
