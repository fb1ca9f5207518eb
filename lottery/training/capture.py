"""A training step recorded once as a CUDA graph (``train.cuda_graph``) on the trial's own GPU, and
the snapshot that undoes the steps run to get there.

Kept apart from the loop because the cost measurements capture the very same way (a step they
time is the step a training runs), and because a capture's stream and device handling is its own
concern: every stream belongs to the training's device, and a failed capture leaves the state
and the current stream as it found them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lottery.config import TrainConfig


def snapshot(model: nn.Module, opt) -> Callable[[], None]:
    """A function that puts the network's weights and buffers and the optimizer's tensor state
    back as they are now (optimizer state created since is zeroed: a zero momentum buffer makes
    the next update SGD's first)."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}

    @torch.no_grad()
    def restore() -> None:
        for k, v in model.state_dict().items():
            v.copy_(weights[k])
        for p, s in opt.state.items():
            for k, v in s.items():
                if torch.is_tensor(v) and k in state.get(p, {}):
                    v.copy_(state[p][k])
                elif torch.is_tensor(v):
                    v.zero_()
        opt.zero_grad(set_to_none=True)

    return restore


def capture(body: Callable[[], None], model: nn.Module, opt, device: torch.device):
    """``body`` (a training step on static buffers) recorded once as a CUDA graph on ``device``.

    Its warm-up runs (which allocate the momentum buffers) run on a side stream and are undone,
    so the training is unchanged. Every stream belongs to ``device``, made current for the
    capture: ``torch.cuda.graph`` otherwise captures on a stream of the current device (cuda:0),
    which on ``cuda:k`` records none of the step's kernels. A failed capture leaves the state and
    the current stream as it found them, and raises."""
    restore, current = snapshot(model, opt), torch.cuda.current_stream(device)
    try:
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    body()
            torch.cuda.current_stream(device).wait_stream(side)
            restore()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
                body()
        return graph
    except Exception:
        with torch.cuda.device(device):  # (set_stream makes its stream's device current: only for the block)
            torch.cuda.set_stream(current)  # a capture that failed as it ended may leave its stream current
        restore()
        raise


def graphs_on(device: torch.device, t: TrainConfig) -> bool:
    """Whether the recipe's step is captured as a CUDA graph on this device (a CPU runs the same
    branch eagerly)."""
    return bool(t.cuda_graph) and device.type == "cuda"
