"""Files a reader never sees half of (write beside, then rename), folders checked writable before
any work, and names for content (a hash of its canonical JSON): what the store, the caches and
every identity key are built on.

This module imports only ``lottery.errors``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from lottery.errors import LotteryError

KEY_FORMAT = 1  # part of every content key: a new format makes new keys


def check_writable(folder: str | Path, what: str) -> None:
    """A folder lottery can write to, or make, else one line naming the key that sets it: a file
    is made and removed in it, or in the nearest folder above it that exists (nothing is left)."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        probe = existing / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LotteryError(f"{what}={folder} cannot be written ({e.strerror or type(e).__name__}): point it at a "
                         "folder you can write") from None


def content_key(spec: dict) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of what defines a run."""
    canonical = json.dumps({"format": KEY_FORMAT, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic(path: Path):
    """Yields a temporary path in ``path``'s folder (same suffix, so numpy adds none); renamed
    onto ``path`` when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    with atomic(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename (torch imported here: the module stays light)."""
    import torch

    with atomic(path) as tmp:
        torch.save(obj, tmp)
