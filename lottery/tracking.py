"""MLflow logging: one run per dense reference (logged once per experiment) and one per ticket,
each created when its work starts and updated as it trains.

The default store is a SQLite file under ``paths.root`` (``.lottery/``) with artifacts beside it,
so nothing needs a server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere (e.g.
``make server``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from lottery.errors import one_line

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


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


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
    client, n = _client(), 0
    for r in find_runs(experiment_id, **tags):
        if r.info.status == "RUNNING" and not alive(r.data.tags):
            client.set_tag(r.info.run_id, "error", "its process ended before the run finished (killed, timed out "
                                                   "or preempted); a later start of the same trial took over")
            client.set_terminated(r.info.run_id, "KILLED")
            n += 1
    if n:
        log.info("marked %d earlier run(s) of this trial, left RUNNING by a process that is gone, as KILLED", n)
    return n


class LiveRun:
    """An MLflow run that exists while its work runs: RUNNING from the start (real start time),
    per-epoch history as it trains, then FINISHED with its results, FAILED with the one-line
    error as its ``error`` tag, or KILLED on an interrupt."""

    def __init__(self, experiment_id: str, name: str, tags: dict, params: dict, parent: str | None = None,
                 start_ms: int | None = None):
        self.client = _client()
        tags = {**{k: str(v) for k, v in tags.items()}, **_owner()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        self.run_id = self.client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info.run_id
        _write(self.client, self.run_id, params, {}, {})

    def epoch(self, line: dict) -> None:
        """One epoch's history record (``lottery.train.record``) as metrics at step = epoch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(line[k]), now, int(line["epoch"]))
                                                    for k in HISTORY if k in line])

    def history(self, lines: list[dict]) -> None:
        for line in lines:
            self.epoch(line)

    def finish(self, metrics: dict, artifacts: dict, tags: dict | None = None, name: str | None = None,
               files: dict[str, object] | None = None, end_ms: int | None = None) -> str:
        """Results, artifacts (``files``: name -> object written by torch.save), then FINISHED."""
        _write(self.client, self.run_id, {}, metrics, artifacts, files or {})
        _tag(self.client, self.run_id, tags or {})
        if name:
            self.client.update_run(self.run_id, name=name)
        self.client.set_terminated(self.run_id, "FINISHED", end_time=end_ms)
        return self.run_id

    def end(self, error: BaseException) -> None:
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        self.client.set_tag(self.run_id, "error", one_line(error))
        self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")


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
    client = _client()
    run_id = client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()}, run_name=name).info.run_id
    client.set_terminated(run_id, "FINISHED")
    return run_id


def reopen(run_id: str) -> None:
    """A parent run RUNNING again while a new invocation of its sweep runs."""
    _client().update_run(run_id, status="RUNNING")


def close(run_id: str, status: str) -> None:
    _client().set_terminated(run_id, status)


def attach(run_id: str, files: list[Path], tags: dict) -> None:
    """Files (replacing those of the same name) and tags on an existing run."""
    client = _client()
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
    _client().log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])


def log_run(experiment_id: str, name: str, tags: dict, params: dict, metrics: dict, artifacts: dict[str, object]) -> str:
    """A finished run in one go (what a trial writes, without its history: the tracking benchmark)."""
    return LiveRun(experiment_id, name, tags, params).finish(metrics, artifacts)


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
            import torch

            torch.save(obj, Path(tmp) / fname)
            client.log_artifact(run_id, str(Path(tmp) / fname))
