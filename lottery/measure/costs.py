"""What a network costs, measured (not assumed): FLOPs, memory, throughput, latency.

FLOPs come from ``torch.utils.flop_counter``; training memory is, on a GPU, the network's
parameters and optimizer state plus the allocator's peak during one step above what was allocated
before it (so data and other networks resident on the device never count; for a recipe that
captures its step as a CUDA graph, the segments of the graph's private memory pool instead, less
cuBLAS workspaces) and, on a CPU, the
bytes of parameters, gradients, optimizer state and tensors saved for backward (counted through
``saved_tensors_hooks``); times use CUDA synchronisation on a GPU, and time the step the recipe
trains with (eager, compiled, or the captured graph replayed).
A measurement that trains works on a copy, and one that only runs forward puts the network's mode
back: the measured network is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lottery import networks
from lottery.config import TrainConfig
from lottery.errors import first_cause, one_line
from lottery.training.capture import capture, graphs_on
from lottery.training.compiling import compiled
from lottery.training.devices import autocast, synchronize
from lottery.training.optimizers import clip_gradients, make_optimizer
from lottery.training.recipe import Recipe
from lottery.training.tasks.base import unit_cross_entropy

log = logging.getLogger("lottery")


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention on a CPU runs a fused kernel flop_counter has no formula for; it costs what the others do.
ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention}


def flops(model: nn.Module) -> int:
    """Forward FLOPs for one image at the network's input shape (a multiply-add counts as two)."""
    return int(counted(model).get_total_flops())


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """The network in eval mode for the block, its mode put back after: a forward pass without
    gradients changes nothing else, so the forward measurements need no copy."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def counted(model: nn.Module) -> FlopCounterMode:
    """The flop counter after one forward pass of one example (an image, or a sequence at the
    data's length; per module: ``get_flop_counts()``)."""
    x = networks.example(model)
    with evaluating(model), FlopCounterMode(display=False, custom_mapping=ATTENTION) as counter, torch.no_grad():
        model(x)
    return counter


def _step(model, opt, x, y, device, t: TrainConfig):
    """The recipe's step: its precision, and its gradient clipping where it clips."""
    with autocast(device, t.amp):
        loss = unit_cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip_gradients(model.parameters(), t)
    opt.step()


def _batch(model: nn.Module, batch_size: int, device, channels_last: bool):
    """A seeded batch of random inputs at the network's input shape (images, or token ids), with
    random targets (its classes, or next tokens)."""
    g = torch.Generator().manual_seed(0)
    x = networks.example(model, batch_size, g).to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, networks.targets(model, batch_size, g).to(device)


def training_memory(model: nn.Module, r: Recipe, device) -> tuple[int, str]:
    """Peak bytes of one training step at the training batch size (the recipe's optimizer's state
    included), and how they were measured."""
    t, m = r.train, copy.deepcopy(model).train()
    opt = make_optimizer(m, r, device)
    x, y = _batch(m, t.batch_size, device, t.channels_last)
    if graphs_on(device, t):
        try:
            return _graph_step_memory(m, opt, x, y, device, t), "cuda_graph_pool_plus_own_state"
        except RuntimeError as e:  # the capture failed here as in training: the eager step it fell back to
            log.warning("costs: capturing the step failed on this host (%s); measuring the eager step",
                        one_line(first_cause(e)))
            m = copy.deepcopy(model).train()
            opt = make_optimizer(m, r, device)
    if device.type == "cuda":
        return _cuda_step_memory(m, opt, x, y, device, t), "cuda_step_peak_plus_own_state"
    saved: dict[int, int] = {}
    params = {p.data_ptr() for p in m.parameters()}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with autocast(device, t.amp), torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
        loss = unit_cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    grads = sum(p.numel() * p.element_size() for p in m.parameters())
    return _own_bytes(m, opt) + grads + sum(saved.values()), "cpu_params_grads_optimizer_saved_tensors"


def _own_bytes(model: nn.Module, opt) -> int:
    """Bytes of the network's parameters and its optimizer state."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                         if torch.is_tensor(v))


def _cuda_step_memory(m, opt, x, y, device, t: TrainConfig) -> int:
    """The network's own state plus the allocator's peak during one training step above what was
    allocated just before it: resident data and other networks on the device never count."""
    _step(m, opt, x, y, device, t)  # optimizer state exists from here on
    opt.zero_grad(set_to_none=True)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _step(m, opt, x, y, device, t)
    synchronize(device)
    return _own_bytes(m, opt) + int(torch.cuda.max_memory_allocated(device)) - before


def _graph_step_memory(m, opt, x, y, device, t: TrainConfig) -> int:
    """The network's own state plus the private memory pool of its step captured as a CUDA graph
    (every intermediate and gradient of the step lives there for the graph's life), the optimizer
    state made by an eager step first. Read from the pool's own segments (``_pool_bytes``), not as
    the reserved bytes around the capture: those also hold a cuBLAS workspace (32 MiB on a Hopper)
    for every new (handle, stream) pair, the warm-up's side stream among them, kept for the
    process's life: about half a CIFAR ResNet's step, and the same for a ticket and its dense
    network, so it would halve their memory reduction."""
    _step(m, opt, x, y, device, t)
    opt.zero_grad(set_to_none=True)
    graph = capture(lambda: _step(m, opt, x, y, device, t), m, opt, device)
    graph.replay()
    synchronize(device)
    return _own_bytes(m, opt) + _pool_bytes(graph.pool(), m)


def _pool_bytes(pool, model: nn.Module) -> int:
    """Bytes of the segments the allocator's snapshot assigns to a graph's memory pool
    (``segment_pool_id``), less the cuBLAS workspaces allocated there for the capture's stream
    and autograd's thread: blocks still allocated, of a workspace's size, that hold no gradient
    (the only tensors of the step that outlive it)."""
    grads = {p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None}
    workspace = {torch.backends.cuda.cublas_workspace_size(), torch.backends.cuda.cublaslt_workspace_size()}
    total = 0
    for segment in torch.cuda.memory_snapshot():
        if tuple(segment["segment_pool_id"]) == tuple(pool):
            total += segment["total_size"] - sum(
                b["size"] for b in segment["blocks"] if b["state"] == "active_allocated"
                and b["requested_size"] in workspace and b["address"] not in grads)
    return total


def _stepper(model: nn.Module, r: Recipe, device, strict: bool = False):
    """One network's training step as the recipe trains it, on a copy and a fixed batch: eager,
    compiled (the graph its training compiled, reused: ``compiling.compiled``), or captured as a
    CUDA graph and replayed; where the fast path fails on this host
    (as the training then fell back), the eager step, said once (``strict``: a failing compile
    raises)."""
    t, m = r.train, copy.deepcopy(model).train()
    opt = make_optimizer(m, r, device)
    x, y = _batch(m, t.batch_size, device, t.channels_last)
    eager = step = functools.partial(_step, m, opt, x, y, device, t)
    if not (t.compile or graphs_on(device, t)):
        return eager
    try:
        if t.compile:
            step = functools.partial(_step, compiled(m, t, device), opt, x, y, device, t)
        fast = capture(step, m, opt, device).replay if graphs_on(device, t) else step
        fast()  # a compile fails, if at all, at its first step
        return fast
    except torch._dynamo.exc.TorchDynamoException as e:
        if strict:
            raise
        return _instead(eager, "compiled", "eager", e)
    except RuntimeError as e:  # a capture's failure: the step uncaptured, compiled if the recipe compiles
        if not graphs_on(device, t):
            raise
        return _instead(step, "captured", "compiled" if t.compile else "eager", e)


def _instead(step, failed: str, path: str, e: BaseException):
    log.warning("costs: the %s step failed on this host (%s); timing the %s step, as training fell back to it",
                failed, one_line(first_cause(e)), path)
    return step


def throughputs(models: list[nn.Module], r: Recipe | list[Recipe], device, steps: int, warmup: int,
                strict: bool = False) -> list[list[float]]:
    """Training images per second of each timed step of each network (after ``warmup`` untimed
    steps), the networks taking turns step by step, so a load that comes and goes touches them
    alike: the recipe's step (its precision, its optimizer, compiled when it trains compiled, the
    captured graph when it trains one), on copies of the networks. ``r``: one recipe, or one per
    network (the fast path's candidates: one network, several layouts and compile choices).
    ``strict``: a compile that fails raises, where a measurement would time the eager step the
    training fell back to (a candidate that cannot compile here is none)."""
    recipes = list(r) if isinstance(r, (list, tuple)) else [r] * len(models)
    steppers = [_stepper(model, r, device, strict) for model, r in zip(models, recipes)]
    for _ in range(warmup):
        for step in steppers:
            step()
    rates: list[list[float]] = [[] for _ in models]
    for _ in range(steps):
        for k, step in enumerate(steppers):
            synchronize(device)
            began = time.perf_counter()
            step()
            synchronize(device)
            rates[k].append(recipes[k].train.batch_size / (time.perf_counter() - began))
    return rates


@torch.no_grad()
def latencies(models: list[nn.Module], batch_size: int, device, repeats: int, t: TrainConfig) -> list[list[float]]:
    """Inference latency (ms) of each repeated forward pass of each network at the given batch
    size, in the recipe's precision and memory format, without autograd, the networks taking
    turns pass by pass."""
    inputs = [_batch(m, batch_size, device, t.channels_last)[0] for m in models]
    times: list[list[float]] = [[] for _ in models]
    with contextlib.ExitStack() as modes, torch.no_grad(), autocast(device, t.amp):
        nets = [modes.enter_context(evaluating(m)) for m in models]
        for m, x in zip(nets, inputs):  # two untimed passes each
            m(x)
            m(x)
        for _ in range(repeats):
            for k, (m, x) in enumerate(zip(nets, inputs)):
                synchronize(device)
                began = time.perf_counter()
                m(x)
                synchronize(device)
                times[k].append(1000 * (time.perf_counter() - began))
    return times


def throughput(model: nn.Module, r: Recipe, device, steps: int, warmup: int) -> float:
    """Median training images per second of one network (``throughputs``)."""
    return statistics.median(throughputs([model], r, device, steps, warmup)[0])


def latency_ms(model: nn.Module, batch_size: int, device, repeats: int, t: TrainConfig) -> float:
    """Median inference latency (ms) of one network (``latencies``)."""
    return statistics.median(latencies([model], batch_size, device, repeats, t)[0])


def median_and_spread(samples: list[float]) -> tuple[float, float]:
    """The median of repeated timings and their spread: the interquartile range (0 for one)."""
    if len(samples) < 2:
        return statistics.median(samples), 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q3 - q1
