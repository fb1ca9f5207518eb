"""What a training keeps, and the files it keeps it in: the record of a training (``Trained``:
time, rewind points, history), its resumable state (written by ``save_state``, read back by
``resume``), the rewind points written once beside it (``Kept``), and their removal once the
result is stored (``discard``).

Every file a training writes goes through here, atomically (a kill mid-write leaves the last
whole one), and every one it reads through ``load_checkpoint`` (weights only: a checkpoint is data,
never code). Tensors are kept as CPU copies (``cpu_state``, ``cpu_tree``), so what is kept
neither holds device memory nor changes as training goes on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lottery.errors import LotteryError
from lottery.files import save_atomic
from lottery.training.optimizers import load_optimizer

log = logging.getLogger("lottery")


def load_checkpoint(path: Path, what: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LotteryError(f"{what} {path} is unreadable ({type(e).__name__}); delete it to start over") from None


def cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def cpu_tree(obj):
    """A CPU copy of every tensor in nested dicts and lists (an optimizer's state dict)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_tree(v) for v in obj)
    return obj


@dataclass
class Trained:
    seconds: float  # wall time of the training epochs (not evaluation, not compiling), across resumptions
    started: float = field(default_factory=time.time)  # wall clock when the first epoch began
    checkpoints: dict[int, dict] = field(default_factory=dict)  # epoch -> state dict (CPU)
    optimizers: dict[int, dict] = field(default_factory=dict)  # epoch -> optimizer state there (CPU)
    history: list[dict] = field(default_factory=list)  # one record per trained epoch (``trainer.record``)
    resumed_from: int | None = None
    # no | stayed (one graph) | recompiled: N graphs | graph (a captured CUDA graph) | fallback: <why> (eager)
    compiled: str = "no"
    compile_seconds: float | None = None  # compiling before the epochs (a compiled recipe), across resumptions
    metered: object = None  # what ``trainer.Job.metered`` yielded around the epochs (a ``carbon.Footprint``)

    def timings(self) -> dict:
        """The training's seconds as a run logs them: ``train_seconds`` (the epochs alone, what
        speed-ups, energy per epoch and estimates divide by) and, where it compiled, ``compile_seconds``."""
        compiling = {} if self.compile_seconds is None else {"compile_seconds": self.compile_seconds}
        return {"train_seconds": self.seconds, **compiling}

    def state(self, model: nn.Module, opt, epoch: int) -> dict:
        """Everything a killed run needs to go on after ``epoch`` epochs, but the kept rewind
        points: those are written once, when reached (``Kept``)."""
        return {"model": cpu_state(model), "optimizer": cpu_tree(opt.state_dict()), "epoch": epoch,
                "seconds": self.seconds, "compile_seconds": self.compile_seconds, "started": self.started,
                "kept": sorted(self.checkpoints), "history": self.history}


class Kept:
    """Rewind points written once, beside the resumable state, when a training reaches them."""

    def __init__(self, state_path: Path | None):
        self.path = state_path

    def _file(self, kind: str, epoch: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.{kind}_{epoch}.pt")

    def write(self, result: Trained, epoch: int) -> None:
        if self.path is not None:
            save_atomic(result.checkpoints[epoch], self._file("theta", epoch))
            save_atomic(result.optimizers[epoch], self._file("optim", epoch))

    def read(self, result: Trained, epochs: list[int]) -> None:
        for e in epochs:
            result.checkpoints[e] = load_checkpoint(self._file("theta", e), "kept rewind point")
            result.optimizers[e] = load_checkpoint(self._file("optim", e), "kept optimizer state")

    def remove(self) -> None:
        if self.path is not None:
            for f in self.path.parent.glob(f"{self.path.stem}.*_*.pt"):
                f.unlink(missing_ok=True)


def save_state(result: Trained, model: nn.Module, opt, epoch: int, state_path: Path) -> None:
    """Write the resumable state after ``epoch`` epochs (``Trained.state``) over the last one."""
    save_atomic(result.state(model, opt, epoch), state_path)


def resume(state_path: Path | None, model: nn.Module, opt, result: Trained, job) -> int:
    """Continue from the state a killed run left after its last saved epoch, if any; the epoch to
    go on from (``job.start``, the ``trainer.Job``'s first epoch, where nothing was saved)."""
    if state_path is None or not state_path.exists():
        return job.start
    state = load_checkpoint(state_path, "training state")
    model.load_state_dict(state["model"])
    load_optimizer(opt, state["optimizer"])
    result.seconds, result.resumed_from = state["seconds"], state["epoch"]
    result.compile_seconds = state.get("compile_seconds")
    result.started, result.history = state.get("started", result.started), state.get("history", [])
    Kept(state_path).read(result, state.get("kept", []))
    log.info("%s: resuming from the state saved after epoch %d (%s)", job.desc, state["epoch"], state_path)
    return state["epoch"]


def discard(state_path: Path | None) -> None:
    """Delete a finished training's resumable state and the rewind points written beside it."""
    if state_path is not None:
        Kept(state_path).remove()
        state_path.unlink(missing_ok=True)
