"""Who wrote a run, as its tags say: the code (MLflow's source tags, so the UI's Source column
names lottery and its git commit) and the process (host and pid, which ``liveness`` reads to tell
a run whose writer still works from one left RUNNING by a process that is gone).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from pathlib import Path


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


def owner() -> dict[str, str]:
    """Which process writes a run: a later start of the same trial asks whether it is still alive."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}
