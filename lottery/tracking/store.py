"""Content-addressed store of dense runs: get-or-train, once, atomically.

An entry lives in ``<root>/dense/<key>/``: ``meta.json`` (what defines it, its metrics, its
per-epoch history, the SHA-256 of every file), one weights file per kept epoch (``theta_<e>.pt``,
and ``theta_final.pt``) and the optimizer's state at each kept epoch (``optim_<e>.pt``), from
which a rewind point the entry lacks is replayed and added later (``add_checkpoint``). It is
built in a temporary folder and renamed into place only when complete, under a file lock, so
concurrent trials train it once and a killed process never leaves an entry that looks finished. An entry that fails its integrity check is set aside and
retrained, never used. Training state for resumption sits in ``<key>.partial/`` meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from lottery.errors import LotteryError
from lottery.files import save_atomic, sha256_file, write_json

log = logging.getLogger("lottery")
FORMAT = 1  # of an entry's meta.json


def _save(state: dict, path: Path) -> str:
    """Write a state dict atomically; its SHA-256, for meta.json."""
    save_atomic(state, path)
    return sha256_file(path)


@dataclass
class Entry:
    key: str
    path: Path
    meta: dict

    @property
    def epochs(self) -> list[int]:
        """Epochs e whose theta_e the entry holds."""
        return sorted(int(e) for e in self.meta["checkpoints"])

    @property
    def metrics(self) -> dict:
        """Numbers (what MLflow logs as metrics)."""
        return self.meta["metrics"]

    @property
    def tags(self) -> dict:
        """Words: how the numbers were measured (what MLflow logs as tags)."""
        return self.meta.get("tags", {})

    def weights(self, epoch: int | str) -> dict:
        """theta_e as a CPU state dict; ``"final"`` for theta_n."""
        name = "final" if epoch == "final" else str(int(epoch))
        if name != "final" and name not in self.meta["checkpoints"]:
            raise LotteryError(f"dense entry {self.key} holds theta at epochs {self.epochs}, not theta_{name}")
        return self._load(f"theta_{name}.pt")

    def optimizer(self, epoch: int) -> dict | None:
        """The optimizer's state when theta_e was kept (None at epoch 0 of an entry without it:
        SGD starts with no state, so a fresh optimizer is exact there)."""
        name = f"optim_{int(epoch)}.pt"
        if name in self.meta["files"]:
            return self._load(name)
        if int(epoch) == 0:
            return None
        raise LotteryError(f"dense entry {self.key} keeps no optimizer state at epoch {epoch}")

    def replay_start(self, epoch: int) -> int:
        """The latest kept epoch j <= ``epoch`` a replay can start from (weights and optimizer state)."""
        return max(e for e in self.epochs if e <= epoch and (e == 0 or f"optim_{e}.pt" in self.meta["files"]))

    def _load(self, name: str) -> dict:
        return torch.load(self.path / name, map_location="cpu", weights_only=True)


@dataclass
class DenseResult:
    """What a training function hands the store: weights to keep, and metrics."""

    checkpoints: dict[int, dict]
    final: dict
    metrics: dict
    optimizers: dict[int, dict] = field(default_factory=dict)  # epoch -> optimizer state at theta_e
    extra: dict = field(default_factory=dict)  # further meta.json fields (test predictions, history)
    tags: dict = field(default_factory=dict)  # how the metrics were measured (strings)


class DenseStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.dir = self.root / "dense"

    def path(self, key: str) -> Path:
        return self.dir / key

    def partial(self, key: str) -> Path:
        """Scratch folder for the resumable state of an entry being trained."""
        return self.dir / f"{key}.partial"

    def lock(self, key: str) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / f"{key}.lock"), is_singleton=True)  # reentrant within a process

    def load(self, key: str) -> Entry | None:
        """The entry if it exists and passes its integrity check; a failing one is set aside."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("key") != key or meta.get("format") != FORMAT:
                raise ValueError("meta.json describes another entry")
            for name, digest in meta["files"].items():
                if sha256_file(path / name) != digest:
                    raise ValueError(f"{name} does not match its checksum")
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = path.with_name(f"{key}.corrupt-{int(time.time())}")
            log.warning("dense entry %s failed its integrity check (%s); moved to %s, retraining",
                        key, e, aside.name)
            os.replace(path, aside)
            return None
        return Entry(key, path, meta)

    def get_or_train(self, key: str, spec: dict, train: Callable[[Path], DenseResult],
                     retrain: bool = False) -> tuple[Entry, bool]:
        """The stored entry, training it first if needed. Returns (entry, trained_now)."""
        with self.lock(key):
            entry = self.load(key)
            if entry is not None and not retrain:
                return entry, False
            partial = self.partial(key)
            partial.mkdir(parents=True, exist_ok=True)
            result = train(partial)
            entry = self._publish(key, spec, result)
            shutil.rmtree(partial, ignore_errors=True)
            return entry, True

    def metas(self):
        """The ``meta.json`` of every stored entry, unchecked (what the sweep estimate reads speeds from);
        folders being written, set aside or resumed (``.<key>.tmp-*``, ``<key>.corrupt-*``) are skipped."""
        for path in self.dir.glob("*/meta.json"):
            if "." not in path.parent.name:
                yield json.loads(path.read_text())

    @contextlib.contextmanager
    def _editing(self, entry: Entry):
        """Yields the entry's meta.json to change; rewritten atomically, under the lock, after the block."""
        with self.lock(entry.key):
            meta = json.loads((entry.path / "meta.json").read_text())
            yield meta
            write_json(entry.path / "meta.json", meta)
            entry.meta = meta

    def update_metrics(self, entry: Entry, metrics: dict, tags: dict, **fields) -> Entry:
        """Add metrics, their tags (and meta fields) to a stored entry."""
        with self._editing(entry) as meta:
            meta["metrics"].update(metrics)
            meta["tags"] = {**meta.get("tags", {}), **tags}
            meta.update(fields)
        return entry

    def add_checkpoint(self, entry: Entry, epoch: int, weights: dict, optimizer: dict) -> Entry:
        """Add theta_e and the optimizer state there to a stored entry (files first, then meta.json:
        a reader sees the entry before or after, never between)."""
        with self._editing(entry) as meta:
            for name, state in ((f"theta_{epoch}.pt", weights), (f"optim_{epoch}.pt", optimizer)):
                meta["files"][name] = _save(state, entry.path / name)
            meta["checkpoints"] = sorted({*meta["checkpoints"], str(epoch)}, key=int)
        return entry

    def _publish(self, key: str, spec: dict, result: DenseResult) -> Entry:
        tmp = self.dir / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = {}
        states = {**{f"theta_{e}": s for e, s in result.checkpoints.items()}, "theta_final": result.final,
                  **{f"optim_{e}": s for e, s in result.optimizers.items()}}
        for name, state in states.items():
            files[f"{name}.pt"] = _save(state, tmp / f"{name}.pt")
        meta = {**result.extra, "format": FORMAT, "key": key, "spec": spec, "metrics": result.metrics,
                "tags": result.tags,
                "checkpoints": [str(e) for e in sorted(result.checkpoints)], "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(tmp / "meta.json", meta)
        final = self.path(key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return Entry(key, final, meta)
