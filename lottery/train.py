"""SGD training with a multistep schedule, resumable from its last completed epoch.

The learning rate is a pure function of the absolute epoch, and the data order a pure function
of (seed, epoch), so a ticket trained from epoch i sees exactly the dense schedule from epoch i
on, and a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lottery.data import Dataset, eval_batches, num_batches, train_batches
from lottery.errors import LotteryError

log = logging.getLogger("lottery")


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
    amp = getattr(amp, "value", amp)
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


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, what: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LotteryError(f"{what} {path} is unreadable ({type(e).__name__}); delete it to start over") from None


def cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class Trained:
    seconds: float  # wall time of the training epochs (not evaluation), across resumptions
    checkpoints: dict[int, dict] = field(default_factory=dict)  # epoch -> state dict (CPU)
    resumed_from: int | None = None


def train(model: nn.Module, data: Dataset, t, *, seed: int, device: torch.device,
          start_epoch: int = 0, keep: set[int] = frozenset(), state_path: Path | None = None,
          desc: str = "train") -> Trained:
    """Train epochs ``start_epoch .. t.epochs - 1`` in place.

    ``keep``: epochs whose starting weights (theta_e, before epoch e) are returned.
    ``state_path``: where the resumable state is written after every epoch; if it exists, the run
    continues from it. It is deleted by the caller once the result is safely stored.
    """
    from tqdm import tqdm

    opt = make_optimizer(model, t)
    result = Trained(0.0)
    epoch = start_epoch
    if state_path is not None and state_path.exists():
        state = load_checkpoint(state_path, "training state")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, result.seconds = state["epoch"], state["seconds"]
        result.checkpoints = {int(k): v for k, v in state["checkpoints"].items()}
        result.resumed_from = epoch
        log.info("%s: resuming from the state saved after epoch %d (%s)", desc, epoch, state_path)
    step_model = compiled(model, device) if t.compile else model
    steps = num_batches(len(data.train), t.batch_size)
    while epoch < t.epochs:
        if epoch in keep:
            result.checkpoints[epoch] = cpu_state(model)
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, t)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        synchronize(device)
        began = time.perf_counter()
        bar = tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{t.epochs}", unit="step",
                   leave=False, disable=not t.progress)
        for x, y in train_batches(data, t.batch_size, seed, epoch, t.augment, t.channels_last):
            with autocast(device, t.amp):
                out = step_model(x)
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)  # accumulated on the device: no sync per step
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            bar.update()
        synchronize(device)
        result.seconds += time.perf_counter() - began
        if not torch.isfinite(loss_sum):
            raise LotteryError(f"{desc}: loss became {loss_sum.item()} in epoch {epoch + 1}; lower train.lr")
        bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}%")
        bar.close()
        epoch += 1
        if state_path is not None:
            save_atomic({"model": cpu_state(model), "optimizer": opt.state_dict(), "epoch": epoch,
                         "seconds": result.seconds, "checkpoints": result.checkpoints}, state_path)
    return result


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
