"""Shared fixtures: composing trial configs the way the CLI does, in an isolated store, on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from lottery.config import register
from tests.helpers import compose_cfg

register()
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """GPU tests run where there is a GPU (make gpu-check), and are skipped, saying why, elsewhere."""
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it on a GPU)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


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
            f"tracking.uri={tracking_uri}", "tracking.log_model=false",
            f"tracking.experiment={tmp_path.name}", *overrides,
        )

    return make
