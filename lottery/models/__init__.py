"""Residual networks behind one contract, so that every criterion, structure, cost and table works
on every family.

A *family* (``model.family``, one module each) builds a network and answers, for any network it
built, dense or ticket: which modules are its residual blocks and whether each one's shortcut is
the identity (``candidates``), how to build a new, physically smaller network without some of
them (``without``) or with narrower inner convolutions (``narrowables``/``narrowed``), and its
plain-data architecture record (``record``/``rebuild``: what ``lottery.load_ticket`` rebuilds
from). Everything else is derived here, the same way for every family, by probing the network:

- a block is **removable** when its shortcut is the identity and its input and output shapes
  match (so removing it leaves ``y = x``); blocks sharing a parent module form a stage, and a
  block that changes the shape opens a new one; every stage keeps at least one block;
- ``features`` are the input of the classifier (the last ``nn.Linear``), for CKA;
- ``skipping`` makes a block pass its input on (KL's "network without the block");
- block outputs are ``maps`` (N, C, H, W) or ``tokens`` (N, T, D), which says which activation
  criteria are defined.

Nothing outside ``lottery/models/`` names a family's modules or parameters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lottery.errors import LotteryError, check_choice


@dataclass(frozen=True)
class Shape:
    """What the data fixes about a network: the input of one image (C, H, W) and the class count."""

    input: tuple[int, int, int]
    classes: int


@dataclass(frozen=True)
class Block:
    path: str  # module path in the network, e.g. "blocks.3" or "layer2.1"
    stage: int
    removable: bool


@dataclass(frozen=True)
class Narrowable:
    """A convolution whose output channels couple to nothing outside its block: they feed only
    its normalisation ``norm`` and the input channels of the next convolution ``next``."""

    conv: str
    norm: str
    next: str
    block: str
    width: int


@dataclass(frozen=True)
class Anatomy:
    """A network's blocks as probed (see the module docstring)."""

    blocks: tuple[Block, ...]
    layout: str  # maps | tokens: the shape of block outputs
    head: str  # the classifier's module path
    input: tuple[int, int, int]

    @property
    def removable(self) -> list[Block]:
        return [b for b in self.blocks if b.removable]

    @property
    def max_removable(self) -> int:
        """Most blocks removable at once while every stage keeps at least one block."""
        total = 0
        for stage in {b.stage for b in self.blocks}:
            members = [b for b in self.blocks if b.stage == stage]
            removable = sum(b.removable for b in members)
            total += removable - (1 if removable == len(members) else 0)
        return total

    def stage_sizes(self) -> dict[int, int]:
        return {s: sum(b.stage == s for b in self.blocks) for s in {b.stage for b in self.blocks}}


class Family:
    """The contract a model family fulfils (see the module docstring); one subclass per family."""

    name: ClassVar[str]

    def check(self, cfg, shape: Shape) -> None:
        """Raise ``LotteryError`` (one line) for a model config this family cannot build."""

    def build(self, cfg, shape: Shape) -> nn.Module:
        """A dense network, freshly initialised from torch's global RNG (seeded by the caller)."""
        raise NotImplementedError

    def label(self, cfg) -> str:
        """The model's short name in run names and tables, e.g. ``resnet32``."""
        raise NotImplementedError

    def candidates(self, model: nn.Module) -> list[tuple[str, bool]]:
        """Every residual block's module path, in forward order, and whether its shortcut is the identity."""
        raise NotImplementedError

    def without(self, model: nn.Module, paths: list[str]) -> nn.Module:
        """A new network without the blocks ``paths``, holding copies of every kept weight."""
        raise NotImplementedError

    def narrowables(self, model: nn.Module) -> list[Narrowable]:
        """The convolutions whose filters a filter ticket may remove; ``LotteryError`` if none."""
        raise LotteryError(f"structure=filter is not defined for model.family={self.name}: it has no "
                           "convolutions whose filters couple only within their block")

    def narrowed(self, model: nn.Module, keep: dict[str, list[int]]) -> nn.Module:
        """A new network keeping only the listed output channels of each narrowable convolution."""
        raise NotImplementedError

    def record(self, model: nn.Module) -> dict:
        """Plain data (str, int, float, lists, dicts) from which ``rebuild`` makes the same architecture."""
        raise NotImplementedError

    def rebuild(self, record: dict) -> nn.Module:
        raise NotImplementedError


FAMILIES: dict[str, Family] = {}


def register(cls):
    FAMILIES[cls.name] = cls()
    return cls


def family(name: str) -> Family:
    check_choice("model.family", name, FAMILIES)
    return FAMILIES[name]


def family_of(model: nn.Module) -> Family:
    return FAMILIES[model.lottery_family]


# --------------------------------------------------------------------------------------------
# Building


def build(cfg, shape: Shape) -> nn.Module:
    """The dense network a model config describes, at the data's input shape and class count."""
    net = family(cfg.family).build(cfg, shape)
    net.lottery_family = cfg.family
    return net


_SKELETONS: dict[str, nn.Module] = {}


def skeleton(cfg, shape: Shape) -> nn.Module:
    """The network on the meta device: its structure without memory (what validation and the
    sweep estimate read; memoised per model config and shape, as a sweep validates many cells of
    one model). Read it, or derive new networks from it; never change it in place."""
    import json

    from omegaconf import OmegaConf

    key = json.dumps([OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), shape.input, shape.classes],
                     sort_keys=True, default=str)
    if key not in _SKELETONS:
        with torch.device("meta"):
            _SKELETONS[key] = build(cfg, shape)
    return _SKELETONS[key]


def check(cfg, shape: Shape) -> nn.Module:
    """A model config that builds a residual network with removable blocks: its skeleton, else one line."""
    family(cfg.family).check(cfg, shape)
    net = skeleton(cfg, shape)
    found = anatomy(net)
    if not found.removable:
        raise LotteryError(f"{label(cfg)} has {len(found.blocks)} residual block(s) but none whose shortcut is the "
                           "identity with matching input and output shapes: no block can be removed")
    return net


def label(cfg) -> str:
    return family(cfg.family).label(cfg)


def record(model: nn.Module) -> dict:
    return {"family": model.lottery_family, **family_of(model).record(model)}


def rebuild(rec: dict) -> nn.Module:
    """The architecture of a record (weights uninitialised: load a state dict into it)."""
    check_choice("model family of the saved ticket", rec.get("family", ""), FAMILIES)
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


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    return tuple(record(model)["input"])


_ANATOMIES: dict[str, Anatomy] = {}


def anatomy(model: nn.Module) -> Anatomy:
    """Blocks, stages, removability and block-output layout, from one probing forward pass (on
    the network's own device, or on meta for a skeleton; the network is left as it was),
    memoised per architecture record."""
    import json

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
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape(model), dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return shapes


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


def block_outputs(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the given blocks for one batch of images (forward hooks, no grad)."""
    out, hooks = {}, []
    for path in paths:
        hooks.append(model.get_submodule(path).register_forward_hook(lambda m, a, y, p=path: out.__setitem__(p, y)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def count_filters(model: nn.Module) -> int:
    """Total output channels over every convolution (stem, block convs, projections)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _register_all() -> None:
    """Import every module of this package: each family registers itself, so adding one is its
    own module (and a config in conf/model/), nothing else."""
    import importlib
    import pkgutil

    for found in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{found.name}")


_register_all()
