"""Where runs are tracked: the MLflow store (``tracking.uri``, ``$MLFLOW_TRACKING_URI``, or the
embedded SQLite file under ``paths.root`` with artifacts beside it, so nothing needs a server),
checked at the door so an unusable one is one line before any work; the experiment; MLflow's
client of that store and its search for runs by tags.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from lottery.config import TrackingConfig
from lottery.errors import LotteryError, one_line
from lottery.files import check_writable
from lottery.tracking.server import DATABASES, check_database


def tracking_uri(cfg: TrackingConfig, root: str) -> str:
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


SCHEMES = ("file", "http", "https", "mssql", "mysql", "postgresql", "sqlite")
# A request to a server that is down fails in seconds, not after MLflow's default ~4 minutes of
# retries: the trial goes on, and what MLflow misses is written later (runs.LiveRun, outbox).
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def check_uri(uri: str, timeout: float = 5.0) -> None:
    """A tracking URI of a supported kind, and, for a server, one that answers its health probe."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if len(scheme) > 1 and scheme not in SCHEMES:  # a one-letter scheme is a Windows drive
        raise LotteryError(f"tracking.uri={uri}: unsupported scheme '{scheme}'; use one of {', '.join(SCHEMES)} "
                           "(e.g. http://127.0.0.1:5000 for `make server`), or unset it for the embedded store")
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        check_writable(Path(uri[len("sqlite:///"):]).parent, "tracking.uri (the folder of its database)")
    if scheme in DATABASES:
        check_database(uri, timeout)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                pass
        except OSError as e:  # URLError, HTTPError, timeouts and refused connections
            raise LotteryError(f"cannot reach the MLflow server at {uri} ({one_line(e)}): start it with "
                               "`make server` or unset `tracking.uri`") from None
        try:  # /health answers any Host header; the API only those the server allows
            with urllib.request.urlopen(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name"
                                        "?experiment_name=Default", timeout=timeout):
                pass
        except urllib.error.HTTPError as e:
            if e.code == 403:
                host = urlparse(uri).netloc
                raise LotteryError(f"the MLflow server at {uri} refuses requests addressed to '{host}' (HTTP 403): "
                                   f"start it with `make server HOST=0.0.0.0 ALLOWED_HOSTS={host}`, or reach it by "
                                   "a name it allows (its IP address)") from None
        except OSError:
            pass  # reached at /health a moment ago; the run's own requests will say what is wrong


def start(cfg: TrackingConfig, root: str) -> str:
    """Point MLflow at the configured store (checked first: one line if it is unusable) and
    experiment; returns the experiment id.

    Concurrent trials on one SQLite store would race to create its tables and the experiment;
    a file lock beside the database makes that first contact one process at a time.
    """
    import mlflow

    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # each retry of a server that is down
    for key, value in RETRIES.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(cfg, root)
    check_uri(uri)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".lock"):
            return _experiment(mlflow, uri, cfg, root)
    return _experiment(mlflow, uri, cfg, root)


def _experiment(mlflow, uri: str, cfg: TrackingConfig, root: str) -> str:
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # a local database keeps its artifacts beside it, not in ./mlruns
        location = local_artifacts(Path(uri[len("sqlite:///"):]).parent)
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent trial
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def mlflow_client():
    """MLflow's client of the current tracking URI (mlflow imported here: an entry point that does
    not log, such as --help, never pays its seconds of import)."""
    from mlflow import MlflowClient

    return MlflowClient()


def find_runs(experiment_id: str, **tags) -> list:
    """The experiment's runs carrying every one of ``tags``."""
    import mlflow

    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return mlflow.search_runs([experiment_id], filter_string=query, output_format="list")
