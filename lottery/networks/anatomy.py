"""What every network answers the same way, read from the network rather than written by its
family: its family and record, its blocks and stages (one probing forward pass), its classifier,
its input and example inputs.

A block is **removable** when its shortcut is the identity and its input and output shapes match
(so removing it leaves ``y = x``); blocks sharing a parent module form a stage, and a block that
changes the shape opens a new one; every stage keeps at least one block. Block outputs are
``maps`` (N, C, H, W) or ``tokens`` (N, T, D), which says which activation criteria are defined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn

from lottery.errors import LotteryError
from lottery.networks.base import FAMILIES, Family, Narrowable


@dataclass(frozen=True)
class Block:
    path: str  # module path in the network, e.g. "blocks.3" or "layer2.1"
    stage: int
    removable: bool


@dataclass(frozen=True)
class Anatomy:
    """A network's blocks as probed (``anatomy``)."""

    blocks: tuple[Block, ...]
    layout: str  # maps | tokens: the shape of block outputs
    head: str  # the classifier's module path
    input: tuple[int, ...]

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


def family_of(model: nn.Module) -> Family:
    return FAMILIES[model.lottery_family]


def record(model: nn.Module) -> dict:
    """The network's architecture record, naming its family (what ``rebuild`` reads)."""
    return {"family": model.lottery_family, **family_of(model).record(model)}


def narrowables(model: nn.Module) -> list[Narrowable]:
    return family_of(model).narrowables(model)


_ANATOMIES: dict[str, Anatomy] = {}


def anatomy(model: nn.Module) -> Anatomy:
    """Blocks, stages, removability and block-output layout, from one probing forward pass (on
    the network's own device, or on meta for a skeleton; the network is left as it was),
    memoised per architecture record."""
    key = json.dumps(record(model), sort_keys=True, default=str)
    if key not in _ANATOMIES:
        _ANATOMIES[key] = _anatomy(model)
    return _ANATOMIES[key]


def removable_paths(model: nn.Module) -> list[str]:
    """The module paths of the network's removable blocks, in forward order."""
    return [b.path for b in anatomy(model).removable]


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
