"""``python -m lottery [hydra overrides]``: run one trial (or a sweep with ``-m``)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

from lottery.config import register
from lottery.errors import LotteryError

CONF = str(Path(__file__).resolve().parent.parent / "conf")
register()


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def _trial(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from lottery import trial

    try:
        trial.run(cfg, overrides=list(HydraConfig.get().overrides.task))
    except LotteryError as e:
        print(f"lottery: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _trial()


if __name__ == "__main__":
    main()
