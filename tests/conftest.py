"""Shared fixtures: composing trial configs the way the CLI does, in an isolated store, on the CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from lottery.config import register
from lottery.experiment import sweeps
from tests.helpers import PINNED, compose_cfg

register()
# Each pytest-xdist worker gets its share of the cores (oversubscribed OpenMP threads spin and crawl).
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))


# The files whose end-to-end trials take longest start first, so that with one file per worker
# (make test: pytest-xdist --dist loadfile) no long file is left running alone at the end.
LONGEST_FIRST = ("test_trial.py", "test_language_models.py", "test_tracking.py", "test_tables.py", "test_bench.py",
                 "test_sweeps.py", "test_config.py", "test_postgres.py", "test_trainer.py", "test_beyond.py", "test_parallel.py", "test_layout.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first (the order inside a file kept); GPU tests run where there is a GPU
    (make gpu-check), and are skipped, saying why, elsewhere."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (make gpu-check runs it on a GPU)")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def tracking_uri_left_as_found():
    """Each test leaves MLflow's tracking URI as it found it: ``mlflow.set_tracking_uri`` also
    exports ``$MLFLOW_TRACKING_URI`` (for subprocesses), which would point a later test's trial,
    whose ``tracking.uri`` is unset, at an earlier test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow

    mlflow.set_tracking_uri(before)  # MLflow's own URI; it touches the variable only when that changes
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once: creating one runs MLflow's schema migrations
    (about 5 s here), which every test that needs a store of its own would otherwise repeat."""
    import mlflow

    path = tmp_path_factory.mktemp("blank") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_store(blank_store):
    """new_store(path) -> the URI of an empty MLflow SQLite store at ``path``, a copy of the blank one."""

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blank_store, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory, blank_store) -> str:
    """One MLflow SQLite store per test session (per worker)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copyfile(blank_store, path)
    return f"sqlite:///{path}"


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


SWEEP = """title: "a tiny sweep"
overrides: [mode=init, model.depth=14, criterion=random]
grids:
  - density: [1, 2]
rows: [density]
columns: null
metrics: [delta_pp]
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The arguments of `python -m lottery sweep` for a sweep of two smoke tickets (density 1 and 2) and
    their one dense network, its file in a folder of its own, everything below ``tmp_path/root``."""
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(SWEEP)
    monkeypatch.setattr(sweeps, "SWEEPS", folder)
    return ["tiny", "--profile", "smoke", f"paths.root={tmp_path / 'root'}", "measure.enabled=false",
            "robustness.enabled=false", "measure.carbon=false", "threads=1", "tracking.log_model=false", "device=cpu",
            "data.train_size=128", *PINNED]


@pytest.fixture
def failing_backend():
    """A torch.compile backend that fails the way a host without a working compiler does."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    def broken(gm, example_inputs):
        raise OSError("no C compiler found for Triton")

    register_backend(broken, name="lottery_test_broken")
    yield "lottery_test_broken"
    _COMPILER_FNS.pop("lottery_test_broken", None)
    torch._dynamo.reset()
