"""MLflow runs that live while their work runs: one per dense reference (logged once per
experiment) and one per ticket, created when the work starts, given its history as it trains and
its results at the end (``LiveRun``, ``Results``), and the parent runs of sweeps and reports found
again on every invocation. Tracking never stops the work: results MLflow does not take are
``Untaken``, for ``outbox`` to keep.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lottery.errors import one_line
from lottery.tracking.connection import find_runs, mlflow_client
from lottery.tracking.logged_model import log_network
from lottery.tracking.provenance import owner, source_tags

log = logging.getLogger("lottery")


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


HISTORY = ("train_loss", "train_accuracy", "lr", "epoch_seconds")  # per-epoch metrics, step = epoch


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
        tags = {**{k: str(v) for k, v in tags.items()}, **owner(), **source_tags()}
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
