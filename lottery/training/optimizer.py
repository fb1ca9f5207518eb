"""The recipe's optimizer (``make_optimizer``) and what every reload of its state and every change
of its learning rate goes through.

``make_optimizer`` is the one place the recipe's optimizer is built (SGD; fused on CUDA, and with
its learning rate a device tensor for a captured step). The rest works on any torch optimizer's
param groups: ``load_optimizer`` keeps this optimizer's own learning-rate tensor and flags across
a reload (a captured CUDA graph reads that very tensor), ``set_lr`` and ``current_lr`` write and
read the rate whether it is a float or a tensor.
"""

from __future__ import annotations

import torch
from torch import nn

from lottery.config import TrainConfig


def make_optimizer(model: nn.Module, t: TrainConfig, device: torch.device | None = None) -> torch.optim.SGD:
    """SGD of the recipe; on CUDA fused (one kernel for the whole update). For a captured step
    (``train.cuda_graph``) fused with the learning rate a tensor on the training device, which the
    graph reads at each replay; on a CPU too (torch's fused SGD runs there), so the tests take the
    branch a GPU takes."""
    graph = bool(t.cuda_graph)
    cuda = device is not None and device.type == "cuda"
    lr = torch.tensor(t.lr, device=device) if graph else t.lr
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay, fused=(cuda or graph) or None)


# What ``Optimizer.load_state_dict`` would overwrite with the saved values, but says how this
# optimizer runs, not where the training is.
OWN_KEYS = ("lr", "fused", "foreach", "differentiable", "capturable")


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state (every reload goes through here). ``load_state_dict`` takes
    the saved param groups whole: a learning rate saved as a CPU tensor would replace the device
    tensor a captured step reads (the fused kernel would then read it as a host scalar, frozen
    into the graph), and the saved run's fused / foreach flags would replace this one's. Each
    group keeps its own, the learning rate refilled with the saved value."""
    own = [{k: g[k] for k in OWN_KEYS if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, mine in zip(opt.param_groups, own):
        saved = group["lr"]
        group.update(mine)
        value = float(saved.item() if torch.is_tensor(saved) else saved)
        if torch.is_tensor(mine["lr"]):
            mine["lr"].fill_(value)
        else:
            group["lr"] = value


def current_lr(opt) -> float:
    """The learning rate the last step took (the scheduled one, or its warm-up share)."""
    lr = opt.param_groups[0]["lr"]
    return float(lr.item() if torch.is_tensor(lr) else lr)


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
