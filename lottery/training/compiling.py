"""The network compiled for one architecture (``train.compile``), how many graphs dynamo compiled,
and where inductor keeps its compiles on disk.

Kept apart from the loop because the cost measurements compile the very same way: a step they
time is the step a training runs, and the graph a training compiled serves them too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from lottery.config import TrainConfig

# Architectures (and layouts) dynamo keeps compiled at once: each is one cache entry of the same
# forward code, and dynamo runs a frame eagerly, unnoticed, past 8 (``recompile_limit``).
HELD = 4
_held: list[tuple] = []  # the architectures compiled since dynamo's caches were last reset, oldest first


def architecture(model: nn.Module, t: TrainConfig, device: torch.device) -> tuple:
    """What a compiled graph of ``model`` depends on beyond its code: the name, shape, stride and
    dtype of every parameter and buffer (a ticket is another architecture, channels_last another
    layout), the backend, the precision and the device."""
    return (type(model).__qualname__, t.compile_backend, t.amp, str(device),
            tuple((k, tuple(v.shape), v.stride(), v.dtype) for k, v in model.state_dict().items()))


def compiled(model: nn.Module, t: TrainConfig, device: torch.device) -> nn.Module:
    """The network compiled with static shapes. Dynamo caches a graph by code, its guards checking
    shapes, strides, dtypes and mode, not which module: a network of an architecture compiled
    before in this process (by the fast path's timing, a training, a replay) runs the graph
    compiled then, so a trial compiles each architecture once and its costs time the trained
    graph. Its caches are reset only to make room for a new architecture beyond ``HELD``, so a
    process that trains many tickets never reaches the recompile limit."""
    key = architecture(model, t, device)
    if key in _held:
        _held.remove(key)
    elif len(_held) >= HELD:
        forget()
    _held.append(key)
    return torch.compile(model, backend=t.compile_backend, dynamic=False)


def forget() -> None:
    """Every graph this process compiled dropped: the next compile of any architecture is a new one."""
    torch._dynamo.reset()
    _held.clear()


def graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process (a training reads its own as a difference)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def begin_trial(root: str | Path) -> None:
    """A trial's compiles start: dynamo's caches reset where an earlier trial of the process left
    graphs (the trial then holds its own architectures, a one-shot trial's two and the fast
    path's layouts, within ``HELD``), and inductor's on-disk caches (compiled graphs, autograd
    graphs, kernels) kept under ``<root>/cache/inductor``, not the host's temporary folder, so a
    sweep's later trials of an architecture start warm, in this process or another, and
    ``paths.root`` holds all a trial leaves. Called before anything of the trial compiles; the
    paths torch remembered for another folder are forgotten (none before inductor first loads)."""
    if _held:
        forget()
    folder = str((Path(root) / "cache" / "inductor").resolve())
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") == folder:
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ["TRITON_CACHE_DIR"] = f"{folder}/triton"  # inductor pins it to the first trial's folder otherwise
    if "torch._inductor.utils" in sys.modules:
        sys.modules["torch._inductor.utils"].clear_caches()
