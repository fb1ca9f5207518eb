"""The training loop: a ``Job`` (which epochs of the recipe, what to keep, where to save) trained
in place by ``train``, one ``Step`` at a time, and the network's evaluation (``predict``,
``evaluate``, ``held_out_accuracy``); the recipe's checks (``check_recipe``) and its epochs
(``epoch_of``, ``rewind_epochs``).

The learning rate is a pure function of the absolute epoch (``schedule``), and the data order a
pure function of (seed, epoch), so a ticket trained from epoch i sees exactly the dense schedule
from epoch i on, and a run resumed from a checkpoint (``checkpoints``) ends with the same weights
as an uninterrupted one (on a GPU too, with ``train.deterministic``). The step runs eager,
compiled once per architecture (``train.compile``: ``compiling``, a last partial batch eagerly;
compiled before the first epoch, its seconds kept apart from the epochs'), or captured whole as a
CUDA graph (``train.cuda_graph``: ``capture``); an epoch never waits for the host (loss and
accuracy accumulate on the device and are read once at its end). Layout and compile arrive
settled (``fast_path``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from lottery.config import TrainConfig, bad_value
from lottery.errors import LotteryError, first_cause, one_line
from lottery.training.batches import batch, epoch_plan, eval_batches, num_batches
from lottery.training.capture import capture, graphs_on
from lottery.training.checkpoints import Kept, Trained, cpu_state, cpu_tree, resume, save_state
from lottery.training.compiling import compiled, graphs_compiled
from lottery.training.data import Dataset
from lottery.training.devices import autocast, synchronize
from lottery.training.optimizers import OPTIMIZERS, clip_gradients, current_lr, load_optimizer, make_optimizer, set_lr
from lottery.training.recipe import Recipe
from lottery.training.schedules import SCHEDULES, in_warmup, lr_at, warmup_epochs

log = logging.getLogger("lottery")


def epoch_of(point, epochs: int) -> int:
    """An epoch given as an int, or as a fraction of a schedule of ``epochs`` epochs."""
    if isinstance(point, float) and not point.is_integer():
        return int(math.floor(point * epochs + 1e-9))
    return int(point)


def rewind_epochs(t: TrainConfig) -> list[int]:
    """The epochs whose weights the dense run keeps (theta_0 always among them)."""
    return sorted({0, *(epoch_of(float(f), t.epochs) if f < 1 else int(f) for f in t.rewind_points)})


def check_recipe(r: Recipe) -> None:
    """The recipe's values, each against its rule, before any work."""
    t = r.train
    if t.epochs < 1:
        raise bad_value("train.epochs", t.epochs, "train for at least one epoch")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(t, key) < 1:
            raise bad_value(f"train.{key}", getattr(t, key), "must be positive")
    if t.save_every_s < 0:
        raise bad_value("train.save_every_s", t.save_every_s, "must be >= 0")
    if not 0 <= t.warmup_epochs <= t.epochs:
        raise bad_value("train.warmup_epochs", t.warmup_epochs, f"must lie in [0, {t.epochs}] (the epochs)")
    if not 0 <= t.warmup_fraction < 1 or warmup_epochs(t) > t.epochs:
        raise bad_value("train.warmup_fraction", t.warmup_fraction, "must lie in [0, 1), and with train.warmup_epochs "
                                                                    "within the schedule")
    if t.clip_norm is not None and t.clip_norm <= 0:
        raise bad_value("train.clip_norm", t.clip_norm, "must be > 0, or null (no clipping)")
    OPTIMIZERS[r.optim.name].check(r.optim)
    SCHEDULES[r.schedule.name].check(r.schedule, t)
    if t.compile and t.cuda_graph:
        raise bad_value("train.cuda_graph", True, "captures the eager step; choose it or train.compile, not both")


@dataclass
class Job:
    """One training run of a network: the recipe, the span of the schedule it trains, what it
    keeps and where it saves its resumable state."""

    recipe: Recipe
    seed: int
    device: torch.device
    start: int = 0  # first epoch trained (a ticket rewound to theta_i starts at i)
    stop: int | None = None  # first epoch not trained (default: the schedule's end)
    optimizer_state: dict | None = None  # the optimizer's state at ``start``, when replaying part of a run
    keep: frozenset[int] = frozenset()  # epochs e whose starting weights theta_e and optimizer state are returned
    state_path: Path | None = None  # resumable state (train.save_every_s); resumed from if it exists
    desc: str = "train"
    on_epoch: Callable[[dict], None] | None = None  # each epoch's history record, a resumed run's earlier ones first
    # entered once the step is compiled, around the epochs alone (the energy of training, not of
    # compiling: codecarbon's tracker); what it yields is ``Trained.metered``
    metered: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float
    images: int


def fallback(what: str, desc: str, error: BaseException) -> str:
    """Say once that a fast path failed on this host and the step runs eagerly; the run's tag
    names the first cause (dynamo wraps a compiler's error in its own)."""
    why = one_line(first_cause(error))
    log.warning("%s: %s failed on this host (%s); training goes on eagerly", desc, what, why)
    return f"fallback: {why}"


class Step:
    """One SGD step on device-resident data: gather and augment the batch, forward, the task's
    loss, backward, update; loss and correct predictions (of the task's units: images, tokens)
    accumulate on the device.

    With ``train.cuda_graph`` the step reads its batch from static buffers and, on CUDA, is
    recorded once as a CUDA graph and replayed (a ResNet32 step is ~400 kernel launches for
    ~1.5 ms of GPU work); on a CPU the same buffers and optimizer run eagerly, the branch the
    tests check. A compiled network takes an epoch's last partial batch eagerly (one graph, one
    static shape: no recompilation), and compiles it in ``warm_up``, before the epochs. A fast path
    that fails on the host (a capture, or the compile) is said once and the step goes on eagerly;
    ``path`` says which ran."""

    def __init__(self, model: nn.Module, opt, data: Dataset, job: Job):
        t, device = job.recipe.train, job.device
        self.model, self.opt, self.data, self.t, self.device, self.desc = model, opt, data, t, device, job.desc
        self.eager = getattr(model, "_orig_mod", model)  # the network itself, compiled or not
        self.params = list(self.eager.parameters())
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph, self.static, self.path = None, None, "no"
        self.compile_failed, self.graphs_before, self.warm_graphs = False, graphs_compiled(), None
        if t.cuda_graph:
            self.static = (torch.zeros(t.batch_size, dtype=torch.long, device=device),
                           torch.zeros(t.batch_size, 2, dtype=torch.long, device=device),
                           torch.zeros(t.batch_size, dtype=torch.bool, device=device))
            if graphs_on(device, t):
                try:
                    self.graph, self.path = capture(lambda: self._body(*self.static), model, opt, device), "graph"
                except Exception as e:  # noqa: BLE001 - any capture failure: the eager step instead
                    self.path = fallback("capturing the step as a CUDA graph", job.desc, e)
                self.loss_sum.zero_()
                self.correct.zero_()
            else:
                self.path = "fallback: no CUDA device to capture on"

    def _body(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> None:
        x, y = batch(self.data, self.t, idx, offsets, flips)
        task, model = self.data.task, self.model if len(idx) == self.t.batch_size else self.eager
        with autocast(self.device, self.t.amp):
            out = model(x)
            loss = task.loss(out, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.params, self.t)
        self.opt.step()
        self.loss_sum += loss.detach() * len(y)
        self.correct += task.hits(out, y)

    def warm_up(self, seed: int, epoch: int) -> float:
        """Compile before the timed epochs: the forward and backward of ``epoch``'s first full
        batch through the compiled network (a compile happens at a graph's first call), then the
        buffers and gradients put back. The optimizer never steps and the random state is forked,
        so the training that follows is the one an uncompiled warm-up would give; its seconds
        (0 where no full batch trains). A compile that fails is said once; the eager network trains."""
        first = next(epoch_plan(self.data, self.t, seed, epoch), None)
        if first is None or len(first[0]) < self.t.batch_size:
            return 0.0
        buffers, began = [(b, b.clone()) for b in self.eager.buffers()], time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                x, y = batch(self.data, self.t, *first)
                with autocast(self.device, self.t.amp):
                    loss = self.data.task.loss(self.model(x), y)
                loss.backward()
        except torch._dynamo.exc.TorchDynamoException as e:  # a compiler's failure (dynamo wraps the backend's)
            self.model, self.compile_failed = self.eager, True
            self.path = fallback("torch.compile", self.desc, e)
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            self.opt.zero_grad(set_to_none=True)
        synchronize(self.device)
        self.warm_graphs = graphs_compiled() - self.graphs_before
        return time.perf_counter() - began

    def __call__(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> None:
        if self.static is not None:
            for buffer, value in zip(self.static, (idx, offsets, flips)):
                buffer.copy_(value, non_blocking=True)
            idx, offsets, flips = self.static
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body(idx, offsets, flips)

    def tag(self) -> str:
        """The path the step ran (the run's ``compiled`` tag): whether a compiled network stayed
        one graph (compiled in the warm-up, or an earlier network's reused) with none compiled in
        the epochs, ``graph`` for a captured step, ``fallback: <why>`` where a fast path was left."""
        parts = []
        if self.t.compile and not self.compile_failed and self.warm_graphs is None:
            parts.append("unused: no full batch trained")
        elif self.t.compile and not self.compile_failed:
            graphs = max(self.warm_graphs, 1) + graphs_compiled() - self.graphs_before - self.warm_graphs
            parts.append("stayed" if graphs == 1 else f"recompiled: {graphs} graphs")
        if self.path != "no":
            parts.append(self.path)
        return ", ".join(parts) or "no"

    def read(self) -> tuple[float, int]:
        """Loss sum and correct count of the epoch so far (the epoch's one host sync), then reset."""
        out = self.loss_sum.item(), self.correct.item()
        self.loss_sum.zero_()
        self.correct.zero_()
        return out


def _epoch(step: Step, job: Job, epoch: int, bar) -> EpochStats:
    """One epoch of steps, each at its rate (set once for the epoch where the rate holds through
    it); the host reads loss and accuracy once, at its end."""
    seen, r, t = 0, job.recipe, job.recipe.train
    steps = num_batches(len(step.data.train), t)
    per_step = in_warmup(epoch, t) or SCHEDULES[r.schedule.name].per_step
    synchronize(job.device)
    began = time.perf_counter()
    for k, (idx, offsets, flips) in enumerate(epoch_plan(step.data, t, job.seed, epoch)):
        if per_step:
            set_lr(step.opt, lr_at(r, epoch, k, steps))
        step(idx, offsets, flips)
        seen += len(idx)
        bar.update()
    loss_sum, correct = step.read()
    units = seen * step.data.task.units(step.data.train.y[:1])  # what an accuracy counts: images, or tokens
    return EpochStats(loss_sum / seen, 100 * correct / units, time.perf_counter() - began, seen)


def _bar(t: TrainConfig, steps: int, desc: str, epoch: int):
    """A progress bar on a terminal; nothing where stderr is a log file (one line per epoch there)."""
    return tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{t.epochs}", unit="step", leave=False,
                disable=not (t.progress and sys.stderr.isatty()))


def _report(stats: EpochStats, t: TrainConfig, desc: str, epoch: int, seconds: float) -> None:
    """Stop on a diverged loss; else one log line per epoch (where bars are not shown)."""
    if not math.isfinite(stats.loss):
        raise LotteryError(f"{desc}: loss became {stats.loss} in epoch {epoch + 1}; lower optim.lr")
    if t.progress:
        log.info("%s epoch %d/%d: loss %.3f, accuracy %.1f%%, %.0f img/s, %.0f s in all", desc, epoch + 1,
                 t.epochs, stats.loss, stats.accuracy, stats.images / stats.seconds, seconds)


def record(epoch: int, lr: float, stats: EpochStats) -> dict:
    """One epoch's line of the training history (MLflow metrics at step ``epoch``, 1-based)."""
    return {"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy, "lr": lr,
            "epoch_seconds": stats.seconds}


def train(model: nn.Module, data: Dataset, job: Job) -> Trained:
    """Train epochs ``job.start .. job.stop - 1`` in place (see ``Job``). The resumable state is
    saved at most every ``train.save_every_s`` seconds and after the last epoch; the caller
    deletes it (``discard``) once the result is safely stored."""
    t = job.recipe.train
    if t.channels_last is None or t.compile is None:
        raise ValueError("train.channels_last and train.compile are settled (lottery.experiment.fast_path) before "
                         "a training starts")
    opt = make_optimizer(model, job.recipe, job.device)
    if job.optimizer_state is not None:
        load_optimizer(opt, job.optimizer_state)
    result = Trained(0.0)
    epoch = resume(job.state_path, model, opt, result, job)
    for line in result.history if job.on_epoch else ():
        job.on_epoch(line)
    model.train()  # before the step is captured or compiled: each records the mode it sees
    step = Step(compiled(model, t, job.device) if t.compile else model, opt, data, job)
    stop = t.epochs if job.stop is None else job.stop
    if t.compile and epoch < stop:
        result.compile_seconds = (result.compile_seconds or 0.0) + step.warm_up(job.seed, epoch)
    with job.metered() if job.metered else contextlib.nullcontext() as metered:
        _epochs(step, job, result, epoch, stop)
    result.metered, result.compiled = metered, step.tag()
    return result


def _epochs(step: Step, job: Job, result: Trained, epoch: int, stop: int) -> None:
    """Epochs ``epoch .. stop - 1``: each kept point written once, each epoch reported and
    recorded in ``result``, the resumable state saved as ``train.save_every_s`` says."""
    t, model, opt, kept = job.recipe.train, step.eager, step.opt, Kept(job.state_path)
    steps, saved = num_batches(len(step.data.train), t), time.time()
    while True:
        if epoch in job.keep and epoch not in result.checkpoints:
            result.checkpoints[epoch], result.optimizers[epoch] = cpu_state(model), cpu_tree(opt.state_dict())
            kept.write(result, epoch)
        if epoch >= stop:
            break
        set_lr(opt, lr_at(job.recipe, epoch))
        with _bar(t, steps, job.desc, epoch) as bar:
            stats = _epoch(step, job, epoch, bar)
        result.seconds += stats.seconds
        _report(stats, t, job.desc, epoch, result.seconds)
        epoch += 1
        result.history.append(record(epoch, current_lr(opt), stats))
        if job.on_epoch:
            job.on_epoch(result.history[-1])
        if job.state_path is not None and (epoch >= stop or time.time() - saved >= t.save_every_s):
            save_state(result, model, opt, epoch, job.state_path)
            saved = time.time()


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, t: TrainConfig, device: torch.device, split=None) -> torch.Tensor:
    """The task's outcome of each example of the test split (or ``split``), on the CPU: the
    predicted class of an image, a sequence's summed token loss and correct tokens; in eval mode,
    unaugmented, under the training precision."""
    model.eval()
    split = split if split is not None else data.test
    out = []
    for x, y in eval_batches(data, split, t.eval_batch_size, t.channels_last):
        with autocast(device, t.amp):
            out.append(data.task.outcome(model(x), y))
    return torch.cat(out)


def held_out_accuracy(model: nn.Module, data: Dataset, t: TrainConfig, device: torch.device) -> dict:
    """Accuracy on the validation split held out of the training images, when there is one."""
    return {} if data.val is None else {"val_accuracy": evaluate(model, data, t, device, data.val)}


def evaluate(model: nn.Module, data: Dataset, t: TrainConfig, device: torch.device, split=None) -> float:
    """Accuracy (%) on the test split (or ``split``): top-1 of images, next-token of sequences."""
    split = split if split is not None else data.test
    return data.accuracy(predict(model, data, t, device, split), split)


def prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    if channels_last is None:
        raise ValueError("train.channels_last is settled (lottery.experiment.fast_path) before a network is placed")
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
