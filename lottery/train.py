"""SGD training with a multistep schedule, resumable from its last completed epoch.

The learning rate is a pure function of the absolute epoch, and the data order a pure function
of (seed, epoch), so a ticket trained from epoch i sees exactly the dense schedule from epoch i
on, and a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lottery.data import Dataset, eval_batches, num_batches, train_batches
from lottery.config import choice
from lottery.files import save_atomic
from lottery.errors import LotteryError, bad_value

log = logging.getLogger("lottery")


def check_recipe(t) -> None:
    """The recipe's values, each against its rule, before any work."""
    if t.epochs < 1:
        raise bad_value("train.epochs", t.epochs, "train for at least one epoch")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(t, key) < 1:
            raise bad_value(f"train.{key}", getattr(t, key), "must be positive")
    bad = [m for m in t.milestones if not 0 < m < t.epochs]
    if bad:
        raise bad_value("train.milestones", list(t.milestones), f"{bad} lie outside the schedule (1..{t.epochs - 1})")
    if list(t.milestones) != sorted(set(t.milestones)):
        raise bad_value("train.milestones", list(t.milestones), "must be strictly increasing")
    for key, ok, rule in (("lr", t.lr > 0, "> 0"), ("momentum", 0 <= t.momentum < 1, "in [0, 1)"),
                          ("weight_decay", t.weight_decay >= 0, ">= 0"), ("gamma", 0 < t.gamma <= 1, "in (0, 1]")):
        if not ok:
            raise bad_value(f"train.{key}", getattr(t, key), f"must be {rule}")


def check_device(name: str) -> None:
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise bad_value("device", name, "use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LotteryError(f"device={name} but no CUDA device is available; use device=cpu")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def lr_at(epoch: int, t) -> float:
    """The learning rate of the given (absolute) epoch under the multistep schedule."""
    return t.lr * t.gamma ** sum(epoch >= m for m in t.milestones)


def make_optimizer(model: nn.Module, t) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                           nesterov=t.nesterov, weight_decay=t.weight_decay)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 matmuls and convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def precision(device: torch.device, amp) -> str:
    """The dtype training computes in on this device: ``bf16`` or ``fp32`` (``amp=auto`` resolved)."""
    amp = choice(amp)
    if amp == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return "bf16" if amp == "bf16" else "fp32"


def autocast(device: torch.device, amp) -> contextlib.AbstractContextManager:
    """bf16 autocast (loss, softmax and BatchNorm stay fp32, as autocast keeps them) or nothing."""
    if precision(device, amp) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """The model compiled once per architecture; on CUDA its step is captured as a CUDA graph
    (``reduce-overhead``): a small ResNet at batch 128 is otherwise bound by kernel launches."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    seconds: float  # wall time of the training epochs (not evaluation), across resumptions
    started: float = field(default_factory=time.time)  # wall clock when the first epoch began
    checkpoints: dict[int, dict] = field(default_factory=dict)  # epoch -> state dict (CPU)
    optimizers: dict[int, dict] = field(default_factory=dict)  # epoch -> optimizer state there (CPU)
    history: list[dict] = field(default_factory=list)  # one record per trained epoch (``Trained.record``)
    resumed_from: int | None = None

    def state(self, model: nn.Module, opt, epoch: int) -> dict:
        """Everything a killed run needs to go on after ``epoch`` epochs."""
        return {"model": cpu_state(model), "optimizer": cpu_tree(opt.state_dict()), "epoch": epoch,
                "seconds": self.seconds, "started": self.started, "checkpoints": self.checkpoints,
                "optimizers": self.optimizers, "history": self.history}


def _resume(state_path: Path | None, model: nn.Module, opt, result: Trained, epoch: int, desc: str) -> int:
    """Continue from the state a killed run left after its last completed epoch, if any."""
    if state_path is None or not state_path.exists():
        return epoch
    state = load_checkpoint(state_path, "training state")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    result.seconds, result.resumed_from = state["seconds"], state["epoch"]
    result.started, result.history = state.get("started", result.started), state.get("history", [])
    result.checkpoints = {int(k): v for k, v in state["checkpoints"].items()}
    result.optimizers = {int(k): v for k, v in state.get("optimizers", {}).items()}
    log.info("%s: resuming from the state saved after epoch %d (%s)", desc, state["epoch"], state_path)
    return state["epoch"]


@dataclass
class Job:
    """One training run of a network: the recipe, the span of the schedule it trains, what it
    keeps and where it saves its resumable state."""

    recipe: object  # TrainConfig
    seed: int
    device: torch.device
    start: int = 0  # first epoch trained (a ticket rewound to theta_i starts at i)
    stop: int | None = None  # first epoch not trained (default: the schedule's end)
    optimizer_state: dict | None = None  # the optimizer's state at ``start``, when replaying part of a run
    keep: frozenset[int] = frozenset()  # epochs e whose starting weights theta_e and optimizer state are returned
    state_path: Path | None = None  # resumable state, written after every epoch; resumed from if it exists
    desc: str = "train"
    on_epoch: Callable[[dict], None] | None = None  # each epoch's history record, a resumed run's earlier ones first


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float
    images: int


def _epoch(step_model, opt, data: Dataset, job: Job, epoch: int, bar) -> EpochStats:
    """One epoch of SGD steps; loss and accuracy accumulate on the device (no sync per step)."""
    t, device = job.recipe, job.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    synchronize(device)
    began = time.perf_counter()
    for x, y in train_batches(data, t.batch_size, job.seed, epoch, t.augment, t.channels_last):
        with autocast(device, t.amp):
            out = step_model(x)
            loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        bar.update()
    synchronize(device)
    return EpochStats(loss_sum.item() / seen, 100 * correct.item() / seen, time.perf_counter() - began, seen)


def _bar(t, steps: int, desc: str, epoch: int):
    """A progress bar on a terminal; nothing where stderr is a log file (one line per epoch there)."""
    from tqdm import tqdm

    return tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{t.epochs}", unit="step", leave=False,
                disable=not (t.progress and sys.stderr.isatty()))


def _report(stats: EpochStats, t, desc: str, epoch: int, seconds: float) -> None:
    """Stop on a diverged loss; else one log line per epoch (where bars are not shown)."""
    if not math.isfinite(stats.loss):
        raise LotteryError(f"{desc}: loss became {stats.loss} in epoch {epoch + 1}; lower train.lr")
    if t.progress:
        log.info("%s epoch %d/%d: loss %.3f, accuracy %.1f%%, %.0f img/s, %.0f s in all", desc, epoch + 1,
                 t.epochs, stats.loss, stats.accuracy, stats.images / stats.seconds, seconds)


def record(epoch: int, lr: float, stats: EpochStats) -> dict:
    """One epoch's line of the training history (MLflow metrics at step ``epoch``, 1-based)."""
    return {"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy, "lr": lr,
            "epoch_seconds": stats.seconds}


def train(model: nn.Module, data: Dataset, job: Job) -> Trained:
    """Train epochs ``job.start .. job.stop - 1`` in place (see ``Job``); the caller deletes the
    resumable state once the result is safely stored."""
    t = job.recipe
    opt = make_optimizer(model, t)
    if job.optimizer_state is not None:
        opt.load_state_dict(job.optimizer_state)
    result = Trained(0.0)
    epoch = _resume(job.state_path, model, opt, result, job.start, job.desc)
    for line in result.history if job.on_epoch else ():
        job.on_epoch(line)
    step_model = compiled(model, job.device) if t.compile else model
    steps = num_batches(len(data.train), t.batch_size)
    stop = t.epochs if job.stop is None else job.stop
    while True:
        if epoch in job.keep:
            result.checkpoints[epoch], result.optimizers[epoch] = cpu_state(model), cpu_tree(opt.state_dict())
        if epoch >= stop:
            return result
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, t)
        model.train()
        with _bar(t, steps, job.desc, epoch) as bar:
            stats = _epoch(step_model, opt, data, job, epoch, bar)
        result.seconds += stats.seconds
        _report(stats, t, job.desc, epoch, result.seconds)
        epoch += 1
        result.history.append(record(epoch, lr_at(epoch - 1, t), stats))
        if job.on_epoch:
            job.on_epoch(result.history[-1])
        if job.state_path is not None:
            save_atomic(result.state(model, opt, epoch), job.state_path)


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, t, device: torch.device, split=None) -> torch.Tensor:
    """Predicted classes (CPU int64) on the test split (or ``split``), in eval mode, unaugmented,
    under the training precision."""
    model.eval()
    split = split if split is not None else data.test
    out = []
    for x, _ in eval_batches(data, split, t.eval_batch_size, t.channels_last):
        with autocast(device, t.amp):
            out.append(model(x).argmax(1))
    return torch.cat(out).cpu()


def accuracy(predictions: torch.Tensor, split) -> float:
    """Top-1 accuracy (%) of predictions against a split's labels."""
    return 100.0 * (predictions == split.y.cpu()).sum().item() / len(split)


def held_out_accuracy(model: nn.Module, data: Dataset, t, device: torch.device) -> dict:
    """Accuracy on the validation split held out of the training images, when there is one."""
    return {} if data.val is None else {"val_accuracy": evaluate(model, data, t, device, data.val)}


def evaluate(model: nn.Module, data: Dataset, t, device: torch.device, split=None) -> float:
    """Top-1 accuracy (%) on the test split (or ``split``)."""
    split = split if split is not None else data.test
    return accuracy(predict(model, data, t, device, split), split)


def conditions(device: torch.device, t, jobs: int) -> str:
    """What a training's wall time depends on besides the network: recorded with every training,
    so that two trainings' times are compared only when these match."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return (f"device={device.type}:{name.replace(' ', '_')} threads={torch.get_num_threads()} "
            f"amp={precision(device, t.amp)} channels_last={t.channels_last} compile={t.compile} jobs={jobs}")


def prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
