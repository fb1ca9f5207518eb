"""Layer-pruning lottery tickets (docs/design.md).

Layers, top to bottom (each imports only those below it; ``make lint`` checks it):
entry points (``__main__``, ``help``), ``paper``, ``experiment``, ``tracking`` and ``pruning``,
``measure``, ``training``, ``networks``, the schema (``config``, ``cli``, ``files``, ``errors``).
"""


def load_ticket(run_id: str, **kwargs):
    """The trained ticket of an MLflow run (see ``lottery.tracking.tickets.load_ticket``)."""
    from lottery.tracking.tickets import load_ticket as load  # `import lottery` stays free of torch and mlflow

    return load(run_id, **kwargs)
