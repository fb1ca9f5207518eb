"""``python -m lottery [hydra overrides]``: run one trial (or a sweep with ``-m``)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import hydra

from lottery import cli
from lottery.config import register

CONF = str(Path(__file__).resolve().parent.parent / "conf")
register()


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@cli.task
def _trial(cfg, overrides: list[str]) -> dict:
    from lottery import trial

    from hydra.core.hydra_config import HydraConfig

    return trial.run(cfg, overrides=overrides, job=HydraConfig.get().job.get("num", 0))


def main() -> None:
    args = sys.argv[1:]
    if {"--help", "-h"} & set(args):
        from lottery.help import text

        print(text())
        return
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
