"""A compiled training: its compile before the timed epochs and logged apart (``compile_seconds``),
a training that the warm-up leaves as it was, each architecture compiled once per trial (a
trained graph reused by the next training of its architecture and by the costs), and inductor's
cache kept under ``paths.root``."""

import os
import time
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from lottery.experiment import trial
from lottery.networks.cifar_resnet import build
from lottery.training import compiling
from lottery.training.trainer import Job, train
from tests.helpers import resnet_plan
from tests.training.test_gpu_path import data, recipe

CPU = torch.device("cpu")
SLEEP_S = 2.0


@pytest.fixture
def backend():
    """backend(name, before) -> a torch.compile backend registered as ``name`` that calls
    ``before(graph, example inputs)`` and then runs the graph as traced; each is removed after."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    names = []

    def make(name, before):
        def compile_(gm, example_inputs):
            before(gm, example_inputs)
            return gm.forward

        register_backend(compile_, name=name)
        names.append(name)
        return name

    yield make
    for name in names:
        _COMPILER_FNS.pop(name, None)
    torch._dynamo.reset()


def test_the_compile_runs_before_the_first_epoch_and_is_logged_apart(backend):
    """A backend that takes 2 s: the epochs do not see it (epoch 1 takes about what epoch 2 does,
    within a margin far above their noise), ``compile_seconds`` does."""
    slow = backend("lottery_test_slow", lambda gm, inputs: time.sleep(SLEEP_S))
    torch.manual_seed(0)
    done = train(build(resnet_plan(8)), data(), Job(recipe(compile=True, compile_backend=slow), 0, CPU))
    first, second = (line["epoch_seconds"] for line in done.history[:2])
    assert first < second + 0.75 * SLEEP_S, (first, second)
    assert done.compile_seconds >= SLEEP_S and done.timings()["compile_seconds"] == done.compile_seconds
    assert done.compiled == "stayed" and sum(line["epoch_seconds"] for line in done.history) == done.seconds
    assert "compile_seconds" not in train(build(resnet_plan(8)), data(), Job(recipe(epochs=1), 0, CPU)).timings()


class Dropped(nn.Module):
    """A network whose step draws random numbers (dropout) and updates buffers (BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                                  nn.Linear(4 * 30 * 30, 10))

    def forward(self, x):
        return self.body(x)


def test_the_warm_up_leaves_the_training_as_an_eager_one():
    """The warm-up's forward and backward change no weight, buffer or gradient, step no optimizer
    and draw no random number the training would: compiled (dynamo, the eager kernels), the
    training ends on the eager one's weights, running statistics and random state."""
    ends = []
    for t in (recipe(warmup_epochs=1), recipe(warmup_epochs=1, compile=True, compile_backend="eager")):
        torch.manual_seed(0)
        model = Dropped()
        done = train(model, data(70), Job(t, 0, CPU))
        ends.append(({k: v.clone() for k, v in model.state_dict().items()}, torch.rand(4)))
    (eager, eager_next), (warmed, warmed_next) = ends
    assert done.compiled == "stayed" and done.compile_seconds > 0
    assert all(torch.equal(v, warmed[k]) for k, v in eager.items()) and torch.equal(eager_next, warmed_next)


def test_a_network_of_an_architecture_compiled_before_reuses_its_graph(backend, monkeypatch):
    """Dynamo's graph serves every network of its architecture (another copy trains on it, nothing
    compiled, and stays one graph); past ``HELD`` architectures the caches are reset, the oldest
    then compiled again."""
    torch._dynamo.reset()
    monkeypatch.setattr(compiling, "_held", [])  # nothing held from the tests before
    compiles = []
    counted = backend("lottery_test_reuse", lambda gm, inputs: compiles.append(len(inputs)))
    t = recipe(compile=True, compile_backend=counted, epochs=1)
    ds = data()
    for _ in range(2):
        torch.manual_seed(0)
        done = train(build(resnet_plan(8)), ds, Job(t, 0, CPU))
        assert done.compiled == "stayed"
    assert len(compiles) == 1
    x = torch.randn(2, 4)
    for width in [*range(1, compiling.HELD + 2), 1]:  # HELD more architectures: the first is gone
        compiling.compiled(nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2)), t.train, CPU)(x)
    assert len(compiles) == 1 + compiling.HELD + 2


def test_a_trial_compiles_each_architecture_once_and_logs_the_compile_on_both_runs(smoke, backend, tmp_path,
                                                                                   monkeypatch):
    """A rewind trial whose rewind point is replayed, its costs measured: the dense network is
    trained, replayed, timed alone and beside its ticket, the ticket trained and timed, on two
    compiles, one per architecture; both runs log ``compile_seconds``, and inductor's cache is
    kept under ``paths.root``."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # put back as it was after the test
    compiles = []
    counted = backend("lottery_test_counted", lambda gm, inputs: compiles.append(tuple(tuple(i.shape) for i in inputs)))
    root = tmp_path / "root"
    out = trial.run(smoke("model.depth=14", "data.train_size=128", "criterion=random", "mode=rewind", "rewind_epoch=3",
                          "robustness.enabled=false", "measure.carbon=false", "train.compile=true",
                          f"train.compile_backend={counted}", f"paths.root={root}"))
    assert len(compiles) == len(set(compiles)) == 2, [len(c) for c in compiles]
    ticket = mlflow.get_run(out["run_id"])
    dense = mlflow.get_run(ticket.data.tags["dense_run_id"])
    for run in (ticket, dense):
        assert run.data.metrics["compile_seconds"] > 0 and run.data.tags["compiled"] == "stayed"
    assert ticket.data.metrics["dense_compile_seconds"] == dense.data.metrics["compile_seconds"]
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == cache_dir() == str((root / "cache" / "inductor").resolve())
    assert os.environ["TRITON_CACHE_DIR"] == f"{cache_dir()}/triton"  # a GPU's kernels too, not the first trial's root
    assert Path(cache_dir()).is_dir()
