"""The contract of an optimizer kind, the ``OPTIMIZERS`` registry (``optim=NAME``), the one place
the recipe's optimizer is built (``make_optimizer``) and what every reload of its state and every
change of its learning rate goes through.

A kind says which parameters its weight decay reaches (``groups``: the paper's SGD decays all of
them; AdamW only the weights of convolutions and linear maps, ``decayed``) and builds the torch
optimizer over those groups. ``make_optimizer`` makes it fused on CUDA, and with its learning rate
a device tensor for a captured step; on a CPU too (torch's fused SGD and AdamW run there), so the
tests take the branch a GPU takes. The rest works on any torch optimizer's param groups:
``load_optimizer`` keeps this optimizer's own learning-rate tensor and flags across a reload (a
captured CUDA graph reads that very tensor), ``set_lr`` and ``current_lr`` write and read the rate
whether it is a float or a tensor.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn

from lottery.config import OptimConfig, Registry, TrainConfig, bad_value

if TYPE_CHECKING:  # a recipe holds its kinds' settings: imported where it is built, not here
    from lottery.training.recipe import Recipe


class Optimizer(ABC):
    """One optimizer kind (a subclass each, registered by name in ``OPTIMIZERS`` with its settings)."""

    name: ClassVar[str]
    doc: ClassVar[str]  # one line for --help

    @abstractmethod
    def groups(self, model: nn.Module, o: OptimConfig) -> list[dict]:
        """The parameters as torch param groups, each with the weight decay it takes."""

    @abstractmethod
    def build(self, groups: list[dict], o: OptimConfig, lr, fused: bool | None,
              capturable: bool) -> torch.optim.Optimizer:
        """The torch optimizer over ``groups`` at learning rate ``lr`` (a float, or a device tensor
        a captured step reads); ``fused``: on CUDA, or for a captured step; ``capturable``: the
        step is captured as a CUDA graph (torch's Adam family refuses a capture without it)."""

    def check(self, o: OptimConfig) -> None:
        """The settings against their rules, before any work (a kind with more extends this)."""
        for key, ok, rule in (("lr", o.lr > 0, "> 0"), ("weight_decay", o.weight_decay >= 0, ">= 0")):
            if not ok:
                raise bad_value(f"optim.{key}", getattr(o, key), f"must be {rule}")
        if o.lr_batch is not None and o.lr_batch < 1:
            raise bad_value("optim.lr_batch", o.lr_batch, "must be a positive batch size, or null")


OPTIMIZERS: Registry[Optimizer] = Registry("optimizer", "optim", OptimConfig)

# Modules whose ``weight`` is a linear map of their input (transformers' GPT-2 ``Conv1D`` is a
# linear layer stored transposed), and the bare weights of torch's attention.
LINEAR = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)
ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def decayed(model: nn.Module) -> set[str]:
    """The names (as ``named_parameters`` gives them) of the weights a decoupled weight decay
    reaches: the weights of convolutions and linear maps, attention's projections included. Never
    a norm's scale or shift, a bias, an embedding (nor a head tied to one), a position embedding, a
    class token or a layer scale: none is a linear map, and decaying them toward 0 only hurts."""
    linear, embedded = set(), set()
    for module in model.modules():
        if isinstance(module, LINEAR) or type(module).__name__ == "Conv1D":
            linear.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention):
            linear.update(id(getattr(module, k)) for k in ATTENTION_WEIGHTS if getattr(module, k) is not None)
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            embedded.add(id(module.weight))
    return {name for name, p in model.named_parameters() if id(p) in linear - embedded}


def split_by_decay(model: nn.Module, o: OptimConfig) -> list[dict]:
    """Two param groups: the ``decayed`` weights at ``optim.weight_decay``, the rest at 0 (an
    empty group left out)."""
    names = decayed(model)
    params = list(model.named_parameters())
    groups = [{"params": [p for n, p in params if n in names], "weight_decay": o.weight_decay},
              {"params": [p for n, p in params if n not in names], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, r: Recipe, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``: on CUDA fused (one kernel for the whole update). For
    a captured step (``train.cuda_graph``) fused with the learning rate a tensor on the training
    device, which the graph reads at each replay (a CPU takes the same branch)."""
    graph = bool(r.train.cuda_graph)
    cuda = device is not None and device.type == "cuda"
    lr = torch.tensor(r.peak_lr, device=device) if graph else r.peak_lr
    kind = OPTIMIZERS[r.optim.name]
    return kind.build(kind.groups(model, r.optim), r.optim, lr, (cuda or graph) or None, graph and cuda)


def clip_gradients(params, t: TrainConfig) -> None:
    """Clip the gradients' global L2 norm to ``train.clip_norm`` where the recipe clips: on the
    device, with no host sync (a captured or compiled step keeps it)."""
    if t.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, t.clip_norm, foreach=True)


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
        if group.get("fused") or group.get("capturable"):  # the saved run's flags cast its step count
            for p in group["params"]:  # to the CPU; a fused or captured step reads it on the device
                state_of = opt.state.get(p, {})
                if torch.is_tensor(state_of.get("step")):
                    state_of["step"] = state_of["step"].to(p.device, torch.float32)


def param_names(model: nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The names of an optimizer's parameters in its state dict's order (across its groups)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def carried_state(state: dict, dense: nn.Module, build: Callable[[nn.Module], nn.Module], r: Recipe) -> dict:
    """The optimizer state ``state`` of the network ``dense`` carried to the smaller network
    ``build(dense)`` makes (a ticket's surgery), as that network's own optimizer would save it.
    Each per-parameter tensor shaped like its parameter (a momentum, AdamW's moments) goes through
    the very surgery the weights go through, held as the weights of a copy of ``dense``: a removed
    block's state leaves with the block, a removed filter's rows with the filter. Scalars (AdamW's
    step count, one value for every parameter) stay as they are."""
    dense = copy.deepcopy(dense).cpu()
    names = param_names(dense, make_optimizer(dense, r))
    saved = {names[int(i)]: s for i, s in state["state"].items()}
    shaped = sorted({k for s in saved.values() for k, v in s.items() if torch.is_tensor(v) and v.dim() > 0})
    carried: dict[str, dict] = {}
    for key in shaped:
        holder = copy.deepcopy(dense)
        with torch.no_grad():
            for name, p in holder.named_parameters():  # NaN: a parameter with no state (never stepped)
                p.copy_(saved[name][key] if key in saved.get(name, {}) else torch.full_like(p, float("nan")))
        for name, p in build(holder).named_parameters():
            if not p.isnan().all():
                carried.setdefault(name, {})[key] = p.detach().clone()
    scalars = {k: v for k, v in next(iter(saved.values()), {}).items() if k not in shaped}
    ticket = build(copy.deepcopy(dense))
    opt = make_optimizer(ticket, r)
    index = {n: i for i, n in enumerate(param_names(ticket, opt))}
    return {"state": {index[n]: {**copy.deepcopy(scalars), **s} for n, s in carried.items()},
            "param_groups": opt.state_dict()["param_groups"]}


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
