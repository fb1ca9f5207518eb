"""MLflow logging: one run per dense reference (logged once) and one per ticket.

The default store is a SQLite file under ``paths.root`` (``.lottery/``) with artifacts beside it,
so nothing needs a server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere (e.g.
``make server``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("lottery")


def tracking_uri(cfg, root: str) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store under ``root``."""
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    Path(root).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def local_artifacts(root: str) -> str:
    """Where the embedded store keeps artifacts (beside its database)."""
    return (Path(root) / "mlartifacts").resolve().as_uri()


def start(cfg, root: str) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id.

    Concurrent trials on one SQLite store would race to create its tables and the experiment;
    a file lock beside the database makes that first contact one process at a time.
    """
    import mlflow

    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri(cfg, root)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock"):
            return _experiment(mlflow, uri, cfg, root)
    return _experiment(mlflow, uri, cfg, root)


def _experiment(mlflow, uri: str, cfg, root: str) -> str:
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI") and not cfg.uri:
        location = local_artifacts(root)
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent trial
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def flatten(cfg) -> dict[str, str]:
    """The resolved config as dotted keys (MLflow params)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return out


def find_runs(experiment_id: str, **tags) -> list:
    import mlflow

    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return mlflow.search_runs([experiment_id], filter_string=query, output_format="list")


def log_run(experiment_id: str, name: str, tags: dict, params: dict, metrics: dict,
            artifacts: dict[str, object]) -> str:
    """One finished run: written in one go, so an interrupted trial leaves no half run."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        with tempfile.TemporaryDirectory() as tmp:
            for fname, content in artifacts.items():
                path = Path(tmp) / fname
                if fname.endswith((".yaml", ".txt")):
                    path.write_text(str(content))
                else:
                    path.write_text(json.dumps(content, indent=2, default=str))
                mlflow.log_artifact(str(path))
        return run.info.run_id
