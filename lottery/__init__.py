"""Layer-pruning lottery tickets."""


def load_ticket(run_id: str, **kwargs):
    """The trained ticket of an MLflow run (see ``lottery.tickets.load_ticket``)."""
    from lottery.tickets import load_ticket as load

    return load(run_id, **kwargs)
