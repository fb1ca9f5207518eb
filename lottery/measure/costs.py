"""What a network costs, measured (not assumed): FLOPs, memory, throughput, latency.

FLOPs come from ``torch.utils.flop_counter``; training memory is, on a GPU, the network's
parameters and optimizer state plus the allocator's peak during one step above what was allocated
before it (so data and other networks resident on the device never count) and, on a CPU, the bytes
of parameters, gradients, optimizer state and tensors saved for backward (counted through
``saved_tensors_hooks``); times use CUDA synchronisation on a GPU.
Every measurement works on a copy, so the measured network is left as it was.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from lottery import networks
from lottery.config import TrainConfig
from lottery.training.devices import autocast, synchronize
from lottery.training.trainer import compiled, make_optimizer


def _attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention on a CPU runs a fused kernel flop_counter has no formula for; it costs what the others do.
ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention}


def flops(model: nn.Module) -> int:
    """Forward FLOPs for one image at the network's input shape (a multiply-add counts as two)."""
    return int(counted(model).get_total_flops())


def counted(model: nn.Module) -> FlopCounterMode:
    """The flop counter after one forward pass of one image (per module: ``get_flop_counts()``)."""
    m = copy.deepcopy(model).eval()
    x = torch.zeros(1, *networks.input_shape(m), device=next(m.parameters()).device)
    with FlopCounterMode(display=False, custom_mapping=ATTENTION) as counter, torch.no_grad():
        m(x)
    return counter


def _step(model, opt, x, y, device, amp):
    with autocast(device, amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _batch(model: nn.Module, batch_size: int, device, channels_last: bool):
    """A seeded batch of random images at the network's input shape, with labels of its classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *networks.input_shape(model), generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, networks.classes(model), (batch_size,), generator=g).to(device)


def training_memory(model: nn.Module, t: TrainConfig, device) -> tuple[int, str]:
    """Peak bytes of one training step at the training batch size, and how they were measured."""
    m = copy.deepcopy(model).train()
    opt = make_optimizer(m, t, device)
    x, y = _batch(m, t.batch_size, device, t.channels_last)
    if device.type == "cuda":
        return _cuda_step_memory(m, opt, x, y, device, t.amp), "cuda_step_peak_plus_own_state"
    saved: dict[int, int] = {}
    params = {p.data_ptr() for p in m.parameters()}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with autocast(device, t.amp), torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
        loss = F.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    grads = sum(p.numel() * p.element_size() for p in m.parameters())
    return _own_bytes(m, opt) + grads + sum(saved.values()), "cpu_params_grads_optimizer_saved_tensors"


def _own_bytes(model: nn.Module, opt) -> int:
    """Bytes of the network's parameters and its optimizer state."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                         if torch.is_tensor(v))


def _cuda_step_memory(m, opt, x, y, device, amp) -> int:
    """The network's own state plus the allocator's peak during one training step above what was
    allocated just before it: resident data and other networks on the device never count."""
    _step(m, opt, x, y, device, amp)  # optimizer state exists from here on
    opt.zero_grad(set_to_none=True)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _step(m, opt, x, y, device, amp)
    synchronize(device)
    return _own_bytes(m, opt) + int(torch.cuda.max_memory_allocated(device)) - before


def throughput(model: nn.Module, t: TrainConfig, device, steps: int, warmup: int) -> float:
    """Steady-state training images per second (after warm-up) of the recipe's step: its
    precision, its optimizer, compiled when it trains compiled; on a copy of the model."""
    m = copy.deepcopy(model).train()
    opt = make_optimizer(m, t, device)
    stepped = compiled(m, t, device) if t.compile else m
    x, y = _batch(m, t.batch_size, device, t.channels_last)
    for _ in range(warmup):
        _step(stepped, opt, x, y, device, t.amp)
    synchronize(device)
    began = time.perf_counter()
    for _ in range(steps):
        _step(stepped, opt, x, y, device, t.amp)
    synchronize(device)
    return steps * t.batch_size / (time.perf_counter() - began)


@torch.no_grad()
def latency_ms(model: nn.Module, batch_size: int, device, repeats: int, t: TrainConfig) -> float:
    """Median inference latency (ms) of one forward pass at the given batch size, in the
    recipe's precision and memory format."""
    m = copy.deepcopy(model).eval()
    x, _ = _batch(m, batch_size, device, t.channels_last)
    with autocast(device, t.amp):
        return _median_ms(m, x, device, repeats)


def _median_ms(m: nn.Module, x: torch.Tensor, device, repeats: int) -> float:
    for _ in range(2):
        m(x)
    times = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        m(x)
        synchronize(device)
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)
