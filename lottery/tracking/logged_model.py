"""A trained network as the MLflow logged model of its run, beside the ticket file that
``lottery.load_ticket`` reads: what ``mlflow.pytorch.load_model`` returns, for MLflow's own tools.
"""

from __future__ import annotations

import copy
import logging

import torch

from lottery import networks
from lottery.errors import one_line
from lottery.tracking.connection import mlflow_client

log = logging.getLogger("lottery")


def log_network(run_id: str, model) -> None:
    """The network as an MLflow model of the run (``mlflow.pytorch.load_model`` returns it),
    exported with torch.export from a contiguous CPU copy in eval mode (loading runs no pickled code), with an
    input example and its signature; once per run. A network torch.export cannot trace is a warning."""
    import mlflow
    import torchvision  # its version is a requirement of the logged model; seconds to import

    if any(o.model_id for o in (mlflow_client().get_run(run_id).outputs.model_outputs or [])):
        return  # already logged (a sync resumed after it)
    # contiguous: torch.export's archive cannot tell a channels_last weight covers its storage (it warns)
    network = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    example = networks.example(network, 2).numpy()  # zeros: images (float32) or token ids (int64)
    requirements = [f"{m.__name__}=={m.__version__.split('+')[0]}" for m in (torch, torchvision)]
    with mlflow.start_run(run_id=run_id):
        try:
            mlflow.pytorch.log_model(network, name="network", input_example=example, pip_requirements=requirements)
        except Exception as e:  # noqa: BLE001 - torch.export cannot trace every network
            log.warning("the network of run %s was not logged as an MLflow model (%s); ticket.pt holds it "
                        "(lottery.load_ticket)", run_id, one_line(e))
