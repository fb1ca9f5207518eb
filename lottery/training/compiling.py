"""The network compiled for one architecture (``train.compile``) and whether it stayed one graph.

Kept apart from the loop because the cost measurements compile the very same way: a step they
time is the step a training runs.
"""

from __future__ import annotations

import torch
from torch import nn

from lottery.config import TrainConfig


def compiled(model: nn.Module, t: TrainConfig, device: torch.device, reset: bool = True) -> nn.Module:
    """The network compiled for one architecture with static shapes: dynamo's caches are reset
    first (``reset``: unless a network compiled beside it must stay compiled), so a process that
    trains many tickets never reaches its recompile limit (and falls back to eager unnoticed);
    ``Trained.compiled`` says whether training stayed on the graph."""
    if reset:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    return torch.compile(model, backend=t.compile_backend, dynamic=False)


def graphs_compiled() -> int:
    """How many graphs dynamo captured since ``compiled`` (1: one graph, no recompilation)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
