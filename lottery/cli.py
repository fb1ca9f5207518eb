"""The one boundary between the code and a person at a terminal, for every entry point.

A ``LotteryError`` becomes one line (``lottery: error: ...``) and exit status 2. In a Hydra
multirun a trial's error never stops the sweep: a ``LotteryError`` is printed as its one line
and the next trial starts; any other exception goes to Hydra, which records the job as failed,
launches the rest and reports the trace at the end. Every trial writes its outcome to a folder
the launching process reads at the end, to print one summary and exit non-zero if any failed.

This module imports only ``lottery.errors`` (and Hydra): every layer's entry point may use it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lottery.errors import LotteryError, one_line

OUTCOMES = "LOTTERY_OUTCOMES"  # environment: the folder trials of one multirun report to


def fail(e: LotteryError) -> int:
    print(f"lottery: error: {e}", file=sys.stderr)
    return 2


def entry(main):
    """An argparse entry point (``main(argv) -> status``) behind the boundary."""

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except LotteryError as e:
            return fail(e)

    return wrapped


def task(fn):
    """A Hydra task function behind the boundary: one line and exit 2 in a single run; in a
    multirun the error goes to Hydra (the sweep goes on) and the outcome to the summary."""

    @functools.wraps(fn)
    def wrapped(cfg) -> None:
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        try:
            out = fn(cfg, overrides)
        except LotteryError as e:
            _report(hc, overrides, "failed", str(e))
            status = fail(e)
            if hc.mode != RunMode.MULTIRUN:
                sys.exit(status)
            return
        except Exception as e:
            _report(hc, overrides, "failed", one_line(e))
            raise
        _report(hc, overrides, "skipped" if (out or {}).get("skipped") else "finished", "")

    return wrapped


def _report(hc, overrides: list[str], status: str, error: str) -> None:
    folder = os.environ.get(OUTCOMES)
    if folder:
        record = {"job": hc.job.get("num", 0), "overrides": overrides, "status": status, "error": error}
        Path(folder, f"{record['job']}.json").write_text(json.dumps(record))


def summary(folder: Path, swept: list[str]) -> tuple[str, bool]:
    """One line on a multirun's trials (failed ones named by their swept values), and whether any failed."""
    records = sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["job"])
    counts = {s: sum(r["status"] == s for r in records) for s in ("finished", "skipped", "failed")}
    line = f"{len(records)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        keys = {o.split("=", 1)[0] for o in swept if "," in o}

        def named(r):
            return " ".join(o for o in r["overrides"] if not keys or o.split("=", 1)[0] in keys)

        line += ": " + "; ".join(f"{named(r)}: {r['error']}" for r in failed)
    return line, bool(failed)
