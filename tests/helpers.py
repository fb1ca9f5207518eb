"""What several test modules share: composing configs as the CLI does, the repository's paths,
networks whose blocks are far from the identity, and a tiny released CIFAR-10-C folder."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lottery.errors import LotteryError
from lottery.experiment import identity, sweeps
from lottery.experiment.context import Context, Records
from lottery.experiment.design import derive, validate
from lottery.experiment.fast_path import DEFAULT, settle
from lottery.files import content_key
from lottery.networks import cifar_resnet
from lottery.training.data import fingerprint
from lottery.training.recipe import Recipe
from lottery.training.sources.base import IMAGE_SHAPE
from lottery.training.devices import precision

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def compose_cfg(*overrides: str, conf: Path = CONF):
    """A trial config composed as the CLI composes it (from ``conf``), on the CPU unless an override
    says otherwise (a GPU host runs the suite as this one does; GPU tests carry the ``cuda`` mark)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=["device=cpu", *PINNED, *overrides])


# The default fast path, given: a suite's numbers never hang on timing its candidates (the tests
# of lottery.experiment.fast_path leave it open).
PINNED = ("train.channels_last=true", "train.compile=false")


def open_context(cfg) -> Context:
    """A trial's context built as ``trial.run`` builds it (design derived, fast path settled, data loaded),
    without the run's set-up around it (threads, device settings, the finished-trial check)."""
    design = derive(cfg)
    return Context.open(design, Records.open(cfg), settle(cfg, design.device))


def train_config(**values) -> Recipe:
    """A training recipe (``optim`` and ``schedule`` name the kinds: SGD + step unless said) on the
    default fast path unless ``values`` say otherwise: what a trial trains with once its path is
    settled."""
    return Recipe.standalone(**{**DEFAULT.settings, **values})


def refusal(*overrides: str) -> str:
    """The one-line error a smoke trial on synthetic data with these overrides gets at the door
    (validation, before any work); fails the test if it is accepted or says more than one line."""
    try:
        validate(compose_cfg("profile=smoke", "data=synthetic", *overrides))
    except LotteryError as e:
        assert "\n" not in str(e), str(e)
        return str(e)
    raise AssertionError(f"accepted: {overrides}")


def randomize(model, seed=0):
    """Random BN statistics and affine parameters, so that no block is close to identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def write_released(tmp_path, n=20):
    rng = np.random.default_rng(0)
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    labels = np.tile(np.arange(n) % 10, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for name in ("gaussian_noise", "fog"):
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    return root


def resnet_plan(depth: int, shortcut: str = "B", num_classes: int = 10):
    """The plan of the CIFAR ResNet of ``depth`` for CIFAR-shaped images (``num_classes`` of them)."""
    return cifar_resnet.resnet_plan(depth, shortcut, num_classes, IMAGE_SHAPE)


def trial_keys(cfg) -> dict:
    """The cell and config keys of a composed trial on this machine's CPU."""
    return identity.trial_keys(cfg, fingerprint(cfg.data), precision(torch.device("cpu"), cfg.train.amp))


def dense_key(cfg) -> str:
    """The store key of the dense network a composed trial on this machine's CPU prunes."""
    return content_key(identity.dense_spec(cfg, fingerprint(cfg.data), precision(torch.device("cpu"), cfg.train.amp)))


def cell_keys(sweep, setting) -> list:
    """The identity of the trial a sweep launches for each of its cells (None where n/a)."""
    return sweeps.keys_of(sweeps.designs(sweeps.compose_cells(sweep, setting)))


def kind_config(registry, name: str, **values):
    """A kind's own config (its settings class, or its group's schema) with ``values``."""
    return registry.settings_of(name)(**{registry.key: name}, **values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(server: subprocess.Popen, port: int) -> subprocess.Popen:
    """``server`` (started in a session of its own) once it answers MLflow's health probe on ``port``."""
    deadline = time.time() + 600  # only stops a hang
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise RuntimeError(f"the MLflow server did not start (exit status {server.returncode})")


def stop(server: subprocess.Popen) -> None:
    """Kill a server and its workers (its whole session)."""
    if server.poll() is None:
        os.killpg(server.pid, 9)
    server.wait()


FAKE_CUDA = torch.device("cuda:1")


def on_fake_cuda(mode, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter and buffer a fake tensor on ``cuda:1`` of ``mode`` (a
    ``FakeTensorMode``): ``module.to("cuda")`` would call into CUDA, so they are swapped in by hand."""
    with mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(mode.from_tensor(p).to(FAKE_CUDA),
                                                                  requires_grad=p.requires_grad)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = mode.from_tensor(b).to(FAKE_CUDA)
    return model


def fake_cuda(mode, tensor: torch.Tensor) -> torch.Tensor:
    """A real tensor as a fake one on ``cuda:1`` of ``mode``."""
    with mode:
        return mode.from_tensor(tensor).to(FAKE_CUDA)


def write_folder(root, per_class=(6, 3), classes=("cat", "dog", "eel"), size=32):
    """A tiny image folder (train/<class>/*.png, test/<class>/*.png) of random images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")
    return root
