"""Experiments: what a trial is, derived from its config (``design``, ``identity``), its context
(``context``: the data, the store, MLflow), the trial pipeline (``trial``) and its dense reference
(``dense``), and many trials at once: paper sweeps (``sweeps``), the cost of what is left
(``estimate``) and guided search (``search``).

May import every layer below it: tracking, pruning, measurement, training, networks and the
schema.
"""
