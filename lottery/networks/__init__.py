"""Residual networks behind one contract, so that every criterion, structure, cost and table works
on every family (the contract and the registry: ``lottery.networks.contract``; one module per
family; ``surgery``: removal and narrowing by module path, shared by the module families).

Derived here the same way for every family, by probing the network:

- a block is **removable** when its shortcut is the identity and its input and output shapes
  match (so removing it leaves ``y = x``); blocks sharing a parent module form a stage, and a
  block that changes the shape opens a new one; every stage keeps at least one block;
- ``features`` are the input of the classifier (the last ``nn.Linear``), for CKA;
- ``skipping`` makes a block pass its input on (KL's "network without the block");
- block outputs are ``maps`` (N, C, H, W) or ``tokens`` (N, T, D), which says which activation
  criteria are defined;
- the weights a per-weight criterion scores are chosen by module type (``scored_weights``):
  convolution kernels, linear and attention projections, and with ``norms`` the normalisation's
  affine parameters; never embeddings, class or position tokens, layer scales or biases.

Nothing outside ``lottery/networks/`` names a family's modules or parameters. This package
imports only the schema (``lottery.config``, ``lottery.errors``); families do not import one
another.
"""

from __future__ import annotations

import contextlib
import json

import torch
from omegaconf import OmegaConf
from torch import nn

from lottery.config import ModelConfig, import_kinds
from lottery.errors import LotteryError, check_choice, one_line
from lottery.networks.contract import FAMILIES, Anatomy, Block, Family, Narrowable, Shape

__all__ = ["FAMILIES", "Anatomy", "Block", "Family", "Narrowable", "Shape"]
import_kinds(__name__, __path__)  # each family's module registers it


def family(name: str) -> Family:
    return FAMILIES[name]


def family_of(model: nn.Module) -> Family:
    return FAMILIES[model.lottery_family]


# --------------------------------------------------------------------------------------------
# Building


def build(cfg: ModelConfig, shape: Shape) -> nn.Module:
    """The dense network a model config describes, at the data's input shape and class count."""
    net = family(cfg.family).build(cfg, shape)
    net.lottery_family = cfg.family
    return net


_SKELETONS: dict[str, nn.Module] = {}


def skeleton(cfg: ModelConfig, shape: Shape) -> nn.Module:
    """The network on the meta device: its structure without memory (what validation and the
    sweep estimate read; memoised per model config and shape, as a sweep validates many cells of
    one model). Read it, or derive new networks from it; never change it in place."""
    key = json.dumps([OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), shape.input, shape.classes],
                     sort_keys=True, default=str)
    if key not in _SKELETONS:
        with torch.device("meta"):
            _SKELETONS[key] = build(cfg, shape)
    return _SKELETONS[key]


def check(cfg: ModelConfig, shape: Shape) -> nn.Module:
    """A model config that reads the data's kind of input and builds a residual network with
    removable blocks: its skeleton, else one line."""
    fam = family(cfg.family)
    if fam.reads != shape.kind:
        fits = sorted(n for n, f in FAMILIES.items() if f.reads == shape.kind)
        raise LotteryError(f"model.family={cfg.family} reads {fam.reads}, and this data is {shape.kind}: choose a "
                           f"model whose family reads {shape.kind} ({', '.join(fits)}) or other data")
    fam.check(cfg, shape)
    try:
        net = skeleton(cfg, shape)
        found = anatomy(net)
    except LotteryError:
        raise
    except Exception as e:  # noqa: BLE001 - a builder's or a forward's own error, from settings it accepted
        raise LotteryError(f"{label(cfg)} cannot be built and run at the data's shape {shape.input} "
                           f"({one_line(e)[:200]}): check the model's settings") from None
    if not found.removable:
        raise LotteryError(f"{label(cfg)} has {len(found.blocks)} residual block(s) but none whose shortcut is the "
                           "identity with matching input and output shapes: no block can be removed")
    return net


def label(cfg: ModelConfig) -> str:
    return family(cfg.family).label(cfg)


def record(model: nn.Module) -> dict:
    return {"family": model.lottery_family, **family_of(model).record(model)}


def rebuild(rec: dict) -> nn.Module:
    """The architecture of a record (weights uninitialised: load a state dict into it)."""
    check_choice("model family of the saved ticket", rec.get("family", ""), FAMILIES.names())
    net = FAMILIES[rec["family"]].rebuild(rec)
    net.lottery_family = rec["family"]
    return net


def like(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` on ``old``'s device and dtype, in its memory format and mode (what surgery keeps)."""
    param = next(old.parameters())
    new = new.to(device=param.device, dtype=param.dtype)
    if channels_last(old):
        new = new.to(memory_format=torch.channels_last)
    new.lottery_family = old.lottery_family
    return new.train(old.training)


def channels_last(model: nn.Module) -> bool:
    """Whether the network's convolution kernels are stored channels_last (read from the first
    kernel whose two layouts differ)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def without(model: nn.Module, paths) -> nn.Module:
    """A new, physically shallower network without the given removable blocks."""
    paths = list(paths)
    removable = {b.path for b in anatomy(model).removable}
    bad = [p for p in paths if p not in removable]
    if bad:
        raise ValueError(f"blocks {bad} change shape (or are not blocks) and cannot be removed")
    return like(family_of(model).without(model, paths), model)


def narrowables(model: nn.Module) -> list[Narrowable]:
    return family_of(model).narrowables(model)


def narrowed(model: nn.Module, keep: dict[str, list[int]]) -> nn.Module:
    """A new, physically narrower network keeping the listed filters of each narrowable convolution."""
    return like(family_of(model).narrowed(model, keep), model)


# --------------------------------------------------------------------------------------------
# What every network answers the same way


def head(model: nn.Module) -> str:
    """The classifier: the last ``nn.Linear`` registered in the network."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise LotteryError(f"{type(model).__name__} has no nn.Linear classifier; lottery reads the class count "
                           "and CKA's penultimate features at its input")
    return linear[-1]


def classes(model: nn.Module) -> int:
    return model.get_submodule(head(model)).out_features


def input_shape(model: nn.Module) -> tuple[int, ...]:
    """One example's input shape: (C, H, W) of an image, (T,) of a token sequence."""
    return tuple(record(model)["input"])


def example(model: nn.Module, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` inputs the network reads, on its device: zeros, or random ones drawn from
    ``generator`` (standard normal images, uniform token ids)."""
    shape, device = (n, *input_shape(model)), next(model.parameters()).device
    tokens = family_of(model).reads == "tokens"
    if generator is None:
        x = torch.zeros(shape, dtype=torch.long if tokens else next(model.parameters()).dtype)
    else:
        x = torch.randint(0, classes(model), shape, generator=generator) if tokens else torch.randn(shape,
                                                                                                generator=generator)
    return x.to(device)


def targets(model: nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
    """Random targets for ``n`` inputs, on the network's device: a class per image, a next token per position."""
    shape = (n, *input_shape(model)) if family_of(model).reads == "tokens" else (n,)
    return torch.randint(0, classes(model), shape, generator=generator).to(next(model.parameters()).device)


def ones_input(model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """SynFlow's data-free all-ones input, as the network's family defines it (docs/design.md §3)."""
    return family_of(model).ones_input(model, input_shape(model), dtype)


_ANATOMIES: dict[str, Anatomy] = {}


def anatomy(model: nn.Module) -> Anatomy:
    """Blocks, stages, removability and block-output layout, from one probing forward pass (on
    the network's own device, or on meta for a skeleton; the network is left as it was),
    memoised per architecture record."""
    key = json.dumps(record(model), sort_keys=True, default=str)
    if key not in _ANATOMIES:
        _ANATOMIES[key] = _anatomy(model)
    return _ANATOMIES[key]


def _anatomy(model: nn.Module) -> Anatomy:
    candidates = family_of(model).candidates(model)
    shapes = _probe(model, [p for p, _ in candidates])
    blocks, stage, parent = [], -1, None
    for path, identity in candidates:
        shape_in, shape_out = shapes[path]
        removable = identity and shape_in == shape_out
        owner = path.rpartition(".")[0]
        if owner != parent or not removable:  # a new parent, or a block that changes the shape
            stage += 1
        parent = owner
        blocks.append(Block(path, stage, removable))
    dims = {len(shapes[p][1]) for p, _ in candidates}  # of one image's output: (C, H, W) or (T, D)
    return Anatomy(tuple(blocks), "maps" if dims == {3} else "tokens", head(model), input_shape(model))


def _probe(model: nn.Module, paths: list[str]) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of each block, per image, in one eval-mode forward of one image."""
    shapes, hooks, modes = {}, [], {m: m.training for m in model.modules()}
    for path in paths:
        hooks.append(model.get_submodule(path).register_forward_hook(
            lambda m, a, y, path=path: shapes.__setitem__(path, (tuple(a[0].shape[1:]), tuple(y.shape[1:])))))
    try:
        model.eval()
        with torch.no_grad():
            model(example(model))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return shapes


# The weights of torch's own modules that a convolution or projection holds (docs/design.md §3).
PROJECTIONS: dict[type, tuple[str, ...]] = {
    nn.modules.conv._ConvNd: ("weight",), nn.Linear: ("weight",), nn.Bilinear: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
}
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def scored_weights(model: nn.Module, norms: bool) -> dict[str, nn.Parameter]:
    """The parameters a per-weight criterion scores, by name, chosen by the module that holds
    them: convolution kernels and linear and attention projections (torch's and those the
    family declares), plus with ``norms`` the normalisation layers' affine parameters."""
    types = {**family_of(model).weight_types(), **PROJECTIONS}  # a family's own types first: they may subclass torch's
    out = {}
    for name, module in model.named_modules():
        own = next((keys for t, keys in types.items() if isinstance(module, t)), ())
        if norms and isinstance(module, NORMS):
            own = ("weight", "bias")
        for key in own:
            p = getattr(module, key, None)
            if isinstance(p, nn.Parameter):
                out[f"{name}.{key}".lstrip(".")] = p
    return out


def batch_statistics(model: nn.Module) -> nn.Module:
    """The network as gradient criteria score it: normalisation layers in training mode (batch
    statistics, as at initialization the running ones mean nothing), everything else in eval
    mode, so no dropout, stochastic depth or other randomness moves the scores."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return model


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features: the classifier's input, flattened (one forward pass)."""
    seen = []
    hook = model.get_submodule(head(model)).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        model(x)
    finally:
        hook.remove()
    return torch.flatten(seen[0], 1)


@contextlib.contextmanager
def skipping(model: nn.Module, path: str):
    """Within the block, the block passes its input on (what removing it computes)."""
    hook = model.get_submodule(path).register_forward_hook(lambda m, a, y: a[0])
    try:
        yield model
    finally:
        hook.remove()


def block_ends(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input and output of the given blocks for one batch (forward hooks, no grad)."""
    out, hooks = {}, []
    for path in paths:
        hooks.append(model.get_submodule(path).register_forward_hook(
            lambda m, a, y, p=path: out.__setitem__(p, (a[0], y))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def block_outputs(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the given blocks for one batch of images (forward hooks, no grad)."""
    return {p: y for p, (_, y) in block_ends(model, x, paths).items()}


def count_filters(model: nn.Module) -> int:
    """Total output channels over every convolution (stem, block convs, projections)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
