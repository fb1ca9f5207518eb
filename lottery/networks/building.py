"""Making networks the same way for every family: the dense network of a model config (or its
structure on the meta device), the check at the door that it builds and has removable blocks, a
saved ticket's architecture rebuilt, and the physically smaller networks of surgery (shallower or
narrower), each on its source network's device, dtype, memory format and mode.
"""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf
from torch import nn

from lottery.config import ModelConfig
from lottery.errors import LotteryError, check_choice, one_line
from lottery.networks.anatomy import anatomy, family_of, removable_paths
from lottery.networks.base import FAMILIES, Family, Shape


def family(name: str) -> Family:
    return FAMILIES[name]


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
    removable = set(removable_paths(model))
    bad = [p for p in paths if p not in removable]
    if bad:
        raise ValueError(f"blocks {bad} change shape (or are not blocks) and cannot be removed")
    return like(family_of(model).without(model, paths), model)


def narrowed(model: nn.Module, keep: dict[str, list[int]]) -> nn.Module:
    """A new, physically narrower network keeping the listed filters of each narrowable convolution."""
    return like(family_of(model).narrowed(model, keep), model)
