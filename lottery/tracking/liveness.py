"""Whether a RUNNING run is still being written: its process (the ``host`` and ``pid`` tags of
``provenance.owner``) alive on this host. A run left RUNNING by a process that is gone (killed,
timed out, preempted) becomes KILLED when the same work starts again, so only FINISHED runs count
as done.
"""

from __future__ import annotations

import logging
import os
import socket

from lottery.tracking.connection import find_runs, mlflow_client

log = logging.getLogger("lottery")


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
