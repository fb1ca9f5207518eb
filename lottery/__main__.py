"""``python -m lottery [hydra overrides]``: run one trial (a sweep of trials with ``-m``); or
``python -m lottery COMMAND [...]`` for one of ``COMMANDS`` (``python -m lottery COMMAND --help``)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from lottery import cli
from lottery.config import CONF, TrialConfig, register
from lottery.errors import LotteryError
from lottery.experiment import search, sweeps, trial
from lottery.files import check_writable
from lottery.help import text
from lottery.paper import report, tables
from lottery.tracking import outbox, postgres, server

register()

# Each command: its entry point and what it does, in one line (``--help`` lists them).
COMMANDS = {
    "sweep": (sweeps.main, "run a paper table's sweep (python -m lottery sweep table2 --profile quick --dry-run)"),
    "table": (tables.main, "build a table from MLflow beside the paper's numbers (same arguments as sweep)"),
    "report": (report.main, "judge the paper's claims from the tables, on one page (--profile quick)"),
    "search": (lambda argv: search.main(), "Optuna search of the accuracy-vs-FLOPs front ([hydra overrides])"),
    "sync": (outbox.main, "log the results MLflow did not take (the outbox) into their runs"),
    "server": (server.main, "check a tracking backend (SQLite, PostgreSQL) and serve MLflow on it (make server)"),
    "postgres": (postgres.main, "start (--stop: stop) a local PostgreSQL to try the server on (make postgres)"),
}


def writable_root(cfg: TrialConfig) -> None:
    """``paths.root``, where Hydra writes its log before the trial starts, is a folder we can write."""
    try:
        check_writable(cfg.paths.root, "paths.root")
    except LotteryError as e:
        sys.exit(cli.fail(e))


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
@cli.task
def _trial(cfg: TrialConfig, overrides: list[str]) -> dict:
    return trial.run(cfg, overrides=overrides, job=HydraConfig.get().job.get("num", 0))


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in COMMANDS:
        command, _ = COMMANDS[args[0]]
        if args[0] == "search":
            writable_root(cli.check_composes(CONF, "search", args[1:]))
        sys.argv = [f"{sys.argv[0]} {args[0]}", *args[1:]]  # Hydra (search) reads its overrides from argv
        sys.exit(command(args[1:]))
    if {"--help", "-h"} & set(args):
        print(text({name: doc for name, (_, doc) in COMMANDS.items()}))
        return
    writable_root(cli.check_composes(CONF, "config", args))
    if not {"-m", "--multirun"} & set(args):
        _trial()
        return
    status = 0
    with tempfile.TemporaryDirectory(prefix="lottery-outcomes-") as folder:
        os.environ[cli.OUTCOMES] = folder
        try:
            _trial()
        except SystemExit as e:  # Hydra's own exit after an unexpected error, reported above
            status = e.code or 0
        line, failed = cli.summary(Path(folder), args)
    print(line, file=sys.stderr)
    sys.exit(1 if failed or status else 0)


if __name__ == "__main__":
    main()
