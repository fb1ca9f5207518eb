"""Shared fixtures: composing trial configs the way the CLI does, in an isolated store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lottery.config import register

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

register()
torch.set_num_threads(min(2, os.cpu_count() or 1))


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store per test session (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def smoke(tmp_path, tracking_uri):
    """compose(...) for a smoke trial on synthetic data, with its own store and experiment."""

    def make(*overrides: str):
        return compose_cfg(
            "profile=smoke", "data=synthetic", "model=resnet20", f"store.root={tmp_path / 'store'}",
            f"data.cache={tmp_path / 'cache'}", f"measure.carbon_dir={tmp_path / 'codecarbon'}",
            f"tracking.uri={tracking_uri}",
            f"tracking.experiment={tmp_path.name}", *overrides,
        )

    return make
