"""MLflow runs: one per dense reference (logged once per experiment) and one per ticket, each
created when its work starts and updated as it trains.

The default store is a SQLite file under ``paths.root`` (``.lottery/``) with artifacts beside it,
so nothing needs a server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere (e.g.
``make server``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from lottery import networks
from lottery.config import TrackingConfig
from lottery.errors import LotteryError, one_line
from lottery.files import check_writable
from lottery.tracking.server import DATABASES, check_database

log = logging.getLogger("lottery")


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
# retries: the trial goes on, and what MLflow misses is written later (LiveRun, lottery.tracking.outbox).
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


HISTORY = ("train_loss", "train_accuracy", "lr", "epoch_seconds")  # per-epoch metrics, step = epoch


def mlflow_client():
    """MLflow's client of the current tracking URI (mlflow imported here: an entry point that does
    not log, such as --help, never pays its seconds of import)."""
    from mlflow import MlflowClient

    return MlflowClient()


@functools.lru_cache(maxsize=1)
def commit() -> str | None:
    """The git commit of this checkout of lottery, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_tags() -> dict[str, str]:
    """MLflow's own source tags: the UI's Source column names lottery and its commit."""
    return {"mlflow.source.name": "lottery", "mlflow.source.type": "LOCAL",
            **({"mlflow.source.git.commit": commit()} if commit() else {})}


def _owner() -> dict[str, str]:
    """Which process writes a run: a later start of the same trial asks whether it is still alive."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def alive(tags: dict) -> bool:
    """Whether the process that started a run is still running (known only on the same host;
    a run from another host left RUNNING is taken as its job having been killed or requeued)."""
    if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
        return False
    pid = int(tags["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_killed(experiment_id: str, **tags) -> int:
    """Runs matching ``tags`` left RUNNING by a process that is gone become KILLED (only FINISHED
    runs count as done); returns how many."""
    store, n = mlflow_client(), 0
    for r in find_runs(experiment_id, **tags):
        if r.info.status == "RUNNING" and not alive(r.data.tags):
            store.set_tag(r.info.run_id, "error", "its process ended before the run finished (killed, "
                                                          "timed out or preempted); a later start of the same trial "
                                                          "took over")
            store.set_terminated(r.info.run_id, "KILLED")
            n += 1
    if n:
        log.info("marked %d earlier run(s) of this trial, left RUNNING by a process that is gone, as KILLED", n)
    return n


@dataclass
class Results:
    """What a run ends with: numbers, words, files, and where to keep them if MLflow does not answer."""

    metrics: dict
    tags: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)  # name -> text (.yaml, .txt) or JSON-able content
    files: dict = field(default_factory=dict)  # name -> object written by torch.save
    name: str | None = None  # the run's final name
    end_ms: int | None = None  # the run's end time (default: now)
    network: object | None = None  # an nn.Module also logged as the run's MLflow model


class LiveRun:
    """An MLflow run that exists while its work runs: RUNNING from the start (real start time),
    per-epoch history as it trains, then FINISHED with its results, FAILED with the one-line
    error as its ``error`` tag, or KILLED on an interrupt.

    Tracking never stops the work: history MLflow does not take (a server down or restarting) is
    kept, with a warning once, and written when MLflow answers again; results it does not take
    at the end raise ``Untaken``, for the caller to keep them (``lottery.tracking.outbox``)."""

    def __init__(self, experiment_id: str, name: str, tags: dict, params: dict, parent: str | None = None,
                 start_ms: int | None = None):
        self.client = mlflow_client()
        tags = {**{k: str(v) for k, v in tags.items()}, **_owner(), **source_tags()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        self.run_id = self.client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info.run_id
        self.tags = tags  # as the run started (the outbox finds a trial's results by its config key)
        self.pending: list[tuple[int, dict]] = []  # (time in ms, history record) MLflow has not taken yet
        self.warned = False
        _write(self.client, self.run_id, params, {}, {})

    @classmethod
    def existing(cls, run_id: str, pending: list | None = None) -> "LiveRun":
        """A handle on a run created earlier (the outbox finishes it)."""
        run = cls.__new__(cls)
        run.client, run.run_id, run.tags, run.pending, run.warned = mlflow_client(), run_id, {}, list(pending or []), False
        return run

    def epoch(self, line: dict) -> None:
        """One epoch's history record (``lottery.training.trainer.record``) as metrics at step = epoch."""
        self.pending.append((int(time.time() * 1000), line))
        try:
            self._flush()
        except Exception as e:  # noqa: BLE001 - whatever the tracking store raises, training goes on
            if not self.warned:
                log.warning("MLflow did not take the training history (%s); training goes on, and the history is "
                            "written when MLflow answers again", reason(e))
            self.warned = True

    def history(self, lines: list[dict]) -> None:
        for line in lines:
            self.epoch(line)

    def _flush(self) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, float(line[k]), ms, int(line["epoch"])) for ms, line in self.pending
                   for k in HISTORY if k in line]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        self.pending.clear()

    def finish(self, results: Results) -> str:
        """Results, artifacts, the network as an MLflow model, then FINISHED; ``Untaken`` (with
        the reason in a few words) if MLflow does not take them."""
        try:
            self._flush()
            _write(self.client, self.run_id, {}, results.metrics, results.artifacts, results.files)
            _tag(self.client, self.run_id, results.tags)
            if results.network is not None:
                log_network(self.run_id, results.network)
            if results.name:
                self.client.update_run(self.run_id, name=results.name)
            self.client.set_terminated(self.run_id, "FINISHED", end_time=results.end_ms)
        except Exception as e:  # noqa: BLE001 - any failure of the tracking store
            raise Untaken(reason(e)) from e
        return self.run_id

    def end(self, error: BaseException) -> None:
        """FAILED (or KILLED) with the one-line error; a warning only when MLflow does not answer
        (the run stays RUNNING, and the next start of the trial marks it KILLED)."""
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        try:
            self.client.set_tag(self.run_id, "error", one_line(error))
            self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow did not take the end of run %s (%s); the next start of the trial marks it KILLED",
                        self.run_id, reason(e))


class Untaken(Exception):
    """MLflow did not take a run's results (its message says why, in a few words)."""


def reason(e: BaseException) -> str:
    """Why a tracking call failed, in a few words (MLflow's own messages run to several lines)."""
    text = str(e)
    if any(s in text for s in ("Connection refused", "Max retries", "NewConnectionError", "timed out")):
        import mlflow

        return f"the tracking server at {mlflow.get_tracking_uri()} does not answer"
    return one_line(e)[:200]


def log_network(run_id: str, model) -> None:
    """The network as an MLflow model of the run (``mlflow.pytorch.load_model`` returns it),
    exported with torch.export from a CPU copy in eval mode (loading runs no pickled code), with an
    input example and its signature; once per run. A network torch.export cannot trace is a warning."""
    import mlflow
    import torchvision  # its version is a requirement of the logged model; seconds to import

    if any(o.model_id for o in (mlflow_client().get_run(run_id).outputs.model_outputs or [])):
        return  # already logged (a sync resumed after it)
    network = copy.deepcopy(model).cpu().float().eval()
    example = networks.example(network, 2).numpy()  # zeros: images (float32) or token ids (int64)
    requirements = [f"{m.__name__}=={m.__version__.split('+')[0]}" for m in (torch, torchvision)]
    with mlflow.start_run(run_id=run_id):
        try:
            mlflow.pytorch.log_model(network, name="network", input_example=example, pip_requirements=requirements)
        except Exception as e:  # noqa: BLE001 - torch.export cannot trace every network
            log.warning("the network of run %s was not logged as an MLflow model (%s); ticket.pt holds it "
                        "(lottery.load_ticket)", run_id, one_line(e))


@contextlib.contextmanager
def live(experiment_id: str, name: str, tags: dict, params: dict, parent: str | None = None):
    """A ``LiveRun`` for the block: ended FAILED (or KILLED) if the block raises."""
    run = LiveRun(experiment_id, name, tags, params, parent)
    try:
        yield run
    except BaseException as e:
        run.end(e)
        raise


def find_or_create(experiment_id: str, name: str, tags: dict, create: bool = True) -> str | None:
    """The newest run carrying ``tags`` (a parent found again on every invocation), else a new
    one (FINISHED until ``reopen``), else None when ``create`` is False."""
    found = sorted(find_runs(experiment_id, **tags), key=lambda r: r.info.start_time, reverse=True)
    if found or not create:
        return found[0].info.run_id if found else None
    client = mlflow_client()
    run_id = client.create_run(experiment_id, tags={**{k: str(v) for k, v in tags.items()}, **source_tags()},
                               run_name=name).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


def reopen(run_id: str) -> None:
    """A parent run RUNNING again while a new invocation of its sweep runs."""
    mlflow_client().update_run(run_id, status="RUNNING")


def close(run_id: str, status: str) -> None:
    mlflow_client().set_terminated(run_id, status)


def attach(run_id: str, files: list[Path], tags: dict) -> None:
    """Files (replacing those of the same name) and tags on an existing run."""
    client = mlflow_client()
    for f in files:
        client.log_artifact(run_id, str(f))
    _tag(client, run_id, tags)


def _tag(client, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_dataset(run_id: str, name: str, digest: str, source: dict, profile: dict) -> None:
    """The data as an MLflow dataset input: name, content digest, where it came from, its sizes."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type=source.get("type", "local"),
                      source=json.dumps(source), profile=json.dumps(profile))
    mlflow_client().log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])


def log_run(experiment_id: str, name: str, tags: dict, params: dict, results: Results) -> str:
    """A finished run in one go (what a trial writes, without its history: the tracking benchmark)."""
    return LiveRun(experiment_id, name, tags, params).finish(results)


def _write(client, run_id: str, params: dict, metrics: dict, artifacts: dict[str, object],
           files: dict[str, object] = None) -> None:
    """Params (in MLflow's batches of 100), metrics, and artifacts: text for .yaml/.txt, JSON
    otherwise, torch.save for ``files``."""
    from mlflow.entities import Metric, Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
    if not (artifacts or files):
        return
    with tempfile.TemporaryDirectory() as tmp:
        for fname, content in artifacts.items():
            path = Path(tmp) / fname
            if fname.endswith((".yaml", ".txt")):
                path.write_text(str(content))
            else:
                path.write_text(json.dumps(content, indent=2, default=str))
            client.log_artifact(run_id, str(path))
        for fname, obj in (files or {}).items():
            torch.save(obj, Path(tmp) / fname)
            client.log_artifact(run_id, str(Path(tmp) / fname))
