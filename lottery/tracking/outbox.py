"""Results MLflow did not take, kept on disk until it does: ``<store>/outbox/<run id>/``.

A trial whose final logging fails (its tracking server down or restarting) keeps here its
metrics, tags, artifacts, weights and the training history MLflow missed, and ends with one line
saying so. The next start of the same trial, or ``python -m lottery sync``, writes them
into the run created when the trial started, marks it FINISHED and removes the entry: the results
are logged once, into that run, never as a second one. Weights are read back with
``weights_only=True``; nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from lottery.cli import ArgumentParser, entry
from lottery.config import TrackingConfig
from lottery.files import save_atomic, write_json
from lottery.tracking.connection import mlflow_client, start
from lottery.tracking.runs import LiveRun, Results
from lottery.tracking.tickets import from_file, ticket_file

log = logging.getLogger("lottery")
RECORD = "run.json"
NETWORK = "network.pt"  # the network to log as an MLflow model, as a ticket file


def keep(folder: Path, run: LiveRun, results: Results) -> Path:
    """Write the results of ``run`` that MLflow did not take into the outbox; the entry appears
    whole or not at all."""
    final = Path(folder) / run.run_id
    tmp = final.with_name(f".{run.run_id}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "files").mkdir(parents=True)
    for name, obj in results.files.items():
        save_atomic(obj, tmp / "files" / name)
    if results.network is not None:
        save_atomic(ticket_file(results.network), tmp / NETWORK)
    write_json(tmp / RECORD, {"run_id": run.run_id, "started": run.tags, "metrics": results.metrics,
                              "tags": results.tags, "artifacts": results.artifacts, "files": sorted(results.files),
                              "name": results.name, "end_ms": results.end_ms,
                              "history": [[ms, line] for ms, line in run.pending]})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def entries(folder: Path, config_key: str | None = None) -> list[Path]:
    """The outbox's entries (of one trial, by its config key, when given)."""
    found = []
    for path in sorted(Path(folder).glob(f"*/{RECORD}")):
        if path.parent.name.startswith("."):
            continue
        record = json.loads(path.read_text())
        if config_key is None or record["started"].get("config_key") == config_key:
            found.append(path.parent)
    return found


def sync(entry: Path) -> dict:
    """Log one entry into its run (unless a sync already finished it) and remove it; returns the
    run's metrics."""
    record = json.loads((entry / RECORD).read_text())
    if mlflow_client().get_run(record["run_id"]).info.status != "FINISHED":
        files = {name: _load(entry / "files" / name) for name in record["files"]}
        network = from_file(_load(entry / NETWORK)) if (entry / NETWORK).exists() else None
        run = LiveRun.existing(record["run_id"], [(ms, line) for ms, line in record["history"]])
        run.finish(Results(record["metrics"], record["tags"], record["artifacts"], files, record["name"],
                           record["end_ms"], network))
        log.info("logged the results of run %s (%s) from the outbox %s", record["run_id"], record["name"], entry)
    shutil.rmtree(entry)
    return {**record["metrics"], "run_id": record["run_id"], "name": record["name"]}


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def sync_all(folder: Path, config_key: str | None = None) -> list[dict]:
    return [sync(entry) for entry in entries(folder, config_key)]


@entry
def main(argv=None) -> int:
    """``python -m lottery sync``: log the results waiting in the outbox into their runs."""
    p = ArgumentParser(prog="python -m lottery sync", description=main.__doc__)
    p.add_argument("--root", default=".lottery", help="paths.root: the embedded MLflow store and the store")
    p.add_argument("--store", default=None, help="store.root (default ROOT/store): the outbox is STORE/outbox")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    start(TrackingConfig(uri=args.tracking_uri), args.root)
    done = sync_all(Path(args.store or Path(args.root) / "store") / "outbox")
    print(f"{len(done)} run(s) logged from the outbox" + "".join(f"\n  {d['name']} ({d['run_id']})" for d in done))
    return 0
