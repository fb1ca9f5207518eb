"""A trained ticket as an MLflow artifact, and back: ``lottery.load_ticket(run_id)``.

The artifact holds the state dict and the ticket's architecture record as plain data
(``lottery.networks.record``: family, architecture, its arguments, removed blocks, narrowed
widths), so it loads with ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lottery import networks
from lottery.config import TrackingConfig
from lottery.errors import LotteryError
from lottery.tracking.connection import tracking_uri
from lottery.training.checkpoints import cpu_state
from lottery.training.sources.base import IMAGE_SHAPE

TICKET_FILE = "ticket.pt"
FORMAT = 2  # 1: a CIFAR ResNet plan alone (of the CIFAR image shape, unless it says otherwise)


def ticket_file(model: nn.Module) -> dict:
    return {"format": FORMAT, "arch": networks.record(model), "state": cpu_state(model)}


def from_file(saved: dict) -> nn.Module:
    """The network a ticket file describes, holding its weights, in eval mode on the CPU."""
    arch = saved["arch"] if saved.get("format", 1) >= 2 else {"family": "cifar_resnet", "input": list(IMAGE_SHAPE),
                                                              **saved["plan"]}
    model = networks.rebuild(arch)
    model.load_state_dict(saved["state"])
    return model.eval()


def load_ticket(run_id: str, root: str = ".lottery", uri: str | None = None, device: str = "cpu") -> nn.Module:
    """The trained ticket of an MLflow ticket run, in eval mode on ``device``: the tracking store
    is ``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded one under ``root``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(TrackingConfig(uri=uri), root))
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TICKET_FILE)
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a missing run or file
        raise LotteryError(f"run {run_id} has no {TICKET_FILE} ({type(e).__name__}); only finished ticket runs "
                           "logged by this version carry their weights") from None
    return from_file(torch.load(Path(path), map_location="cpu", weights_only=True)).to(device)
