"""Bookkeeping: where runs are tracked, checked at the door (``connection``); MLflow runs that
never stop the work (``runs``), saying which code and process wrote them (``provenance``), those
left RUNNING by a process that is gone marked KILLED (``liveness``), a network as a run's MLflow
model (``logged_model``); results MLflow missed, kept and logged once later (``outbox``); a
trained ticket as a file and back (``tickets``); the content-addressed store of dense networks
(``store``); and the tracking server (``server``) with a PostgreSQL of one's own (``postgres``).

May import ``lottery.training``, ``lottery.networks`` and the schema; not pruning, measurement
or the experiment.
"""
