"""A trained ticket as an MLflow artifact, and back: ``lottery.load_ticket(run_id)``.

The artifact holds the state dict and the ticket's block plan as plain data, so it loads with
``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lottery.errors import LotteryError
from lottery.models import Plan, ResNet, build
from lottery.train import cpu_state

TICKET_FILE = "ticket.pt"


def ticket_file(model: ResNet, plan: Plan) -> dict:
    return {"format": 1, "plan": plan.record(), "state": cpu_state(model)}


def load_ticket(run_id: str, root: str = ".lottery", uri: str | None = None, device: str = "cpu") -> ResNet:
    """The trained ticket of an MLflow ticket run, in eval mode on ``device``: the tracking store
    is ``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded one under ``root``."""
    import mlflow

    from lottery.config import TrackingConfig
    from lottery.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(TrackingConfig(uri=uri), root))
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TICKET_FILE)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run or file
        raise LotteryError(f"run {run_id} has no {TICKET_FILE} ({type(e).__name__}); only finished ticket runs "
                           "logged by this version carry their weights") from None
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = build(Plan.from_record(saved["plan"]))
    model.load_state_dict(saved["state"])
    return model.to(device).eval()
