"""The one boundary between the code and a person at a terminal, for every entry point.

A ``LotteryError`` becomes one line (``lottery: error: ...``) and exit status 2, and so does a
config that does not compose (Hydra's and OmegaConf's own words, less their hints). In a Hydra
multirun a trial's error never stops the sweep: a ``LotteryError`` is printed as its one line
and the next trial starts; any other exception goes to Hydra, which records the job as failed,
launches the rest and reports the trace at the end. Every trial writes its outcome to a folder
the launching process reads at the end, to print one summary and exit non-zero if any failed.

This module imports only ``lottery.errors`` (and Hydra): every layer's entry point may use it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from lottery.errors import LotteryError, one_line

COMPOSITION = (HydraException, OmegaConfBaseException)  # a config that does not compose

OUTCOMES = "LOTTERY_OUTCOMES"  # environment: the folder trials of one multirun report to

# Keys of format 1 that moved to the group of the kind that reads them (docs/design.md §5, §10):
# an old override names its new path. The identity keeps their old paths from this same table.
RENAMED = {"train.lr": "optim.lr", "train.momentum": "optim.momentum", "train.nesterov": "optim.nesterov",
           "train.weight_decay": "optim.weight_decay", "train.milestones": "schedule.milestones",
           "train.gamma": "schedule.gamma"}


def fail(e: LotteryError) -> int:
    print(f"lottery: error: {e}", file=sys.stderr)
    return 2


def composition_line(e: Exception) -> str:
    """A composition error as one line: its own words (the options a group has, the key or value
    at fault and why), less Hydra's hints and search path."""
    text = str(e)
    for hint in ("\nConfig search path:", "\nTo append", "\nSee https", "\n    full_key:"):
        text = text.split(hint)[0]
    text = re.sub(r"Available options in '([^']+)':((?:\s*\n\t[^\n]+)+)",
                  lambda m: f"Available options in '{m[1]}': " + ", ".join(m[2].split()), text)
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text.rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    moved = re.search(r"Could not override '([^']+)'", text)
    if moved and moved[1].lstrip("+~") in RENAMED:
        old = moved[1].lstrip("+~")
        text += f"; {old} is now {RENAMED[old]} (the optim= and schedule= groups, docs/design.md §5)"
    return text


def check_composes(conf: Path, config_name: str, args: list[str]):
    """Compose the config the command line asks for (each value of a swept key in turn) and exit
    with one line, status 2, if it does not compose: before Hydra starts, whose own report is a
    page and status 1. Returns the config of the first case."""
    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        swept = {o.input_line: [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                 for o in parsed if o.is_sweep_override()}
        firsts = [values[0] for values in swept.values()]
        cases = [firsts] + [[v if o == line else first for o, first in zip(swept, firsts)]
                            for line, values in swept.items() for v in values[1:]]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return [compose(config_name=config_name, overrides=[*fixed, *case]) for case in cases][0]
    except COMPOSITION as e:
        sys.exit(fail(LotteryError(composition_line(e))))
    finally:
        GlobalHydra.instance().clear()


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands, whose bad argument is one line (not the usage page) and exit 2."""

    def error(self, message: str):
        sys.exit(fail(LotteryError(f"{self.prog}: {message} (see {self.prog} --help)")))


def entry(main):
    """An argparse entry point (``main(argv) -> status``) behind the boundary."""

    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except LotteryError as e:
            return fail(e)
        except COMPOSITION as e:
            return fail(LotteryError(composition_line(e)))

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
