"""Writing files so that a reader never sees half of one: write beside, then rename."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


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
    """torch.save to a temporary file, then rename."""
    import torch

    with atomic(path) as tmp:
        torch.save(obj, tmp)
