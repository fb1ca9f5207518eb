"""What a model family fulfils, the registry of families, and the values the contract speaks in.

A *family* (``model=...`` picks one through its YAML file, one module each) builds a network and
answers, for any network it built, dense or ticket: which modules are its residual blocks and
whether each one's shortcut is the identity (``candidates``), how to build a new, physically
smaller network without some of them (``without``) or with narrower inner convolutions
(``narrowables``/``narrowed``), and its plain-data architecture record (``record``/``rebuild``:
what ``lottery.load_ticket`` rebuilds from). Its own config keys extend ``ModelConfig`` and are
registered with it. Everything else is derived the same way for every family, by probing the
network (``lottery.networks.anatomy``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from lottery.config import ModelConfig, Registry
from lottery.errors import LotteryError


@dataclass(frozen=True)
class Shape:
    """What the data fixes about a network: the input of one example ((C, H, W) for images, (T,)
    for token sequences), the class count (a language model's vocabulary) and what the input is."""

    input: tuple[int, ...]
    classes: int
    kind: str = "images"  # images | tokens


@dataclass(frozen=True)
class Narrowable:
    """A convolution whose output channels couple to nothing outside its block: they feed only
    its normalisation ``norm`` and the input channels of the next convolution ``next``."""

    conv: str
    norm: str
    next: str
    block: str
    width: int


IdentityRule = Callable[[nn.Module], bool]  # whether a block's shortcut is the identity


class Family(abc.ABC):
    """The contract a model family fulfils (see the module docstring); one subclass per family,
    registered with ``@FAMILIES.registered(Settings)``. The abstract methods are what every family
    implements; the others are optional hooks with a default."""

    name: ClassVar[str]
    reads: ClassVar[str] = "images"  # the input kind its networks read (``Shape.kind``)

    @abc.abstractmethod
    def build(self, cfg: ModelConfig, shape: Shape) -> nn.Module:
        """A dense network, freshly initialised from torch's global RNG (seeded by the caller)."""

    @abc.abstractmethod
    def label(self, cfg: ModelConfig) -> str:
        """The model's short name in run names and tables, e.g. ``resnet32``."""

    @abc.abstractmethod
    def candidates(self, model: nn.Module) -> list[tuple[str, bool]]:
        """Every residual block's module path, in forward order, and whether its shortcut is the identity."""

    @abc.abstractmethod
    def without(self, model: nn.Module, paths: list[str]) -> nn.Module:
        """A new network without the blocks ``paths``, holding copies of every kept weight."""

    @abc.abstractmethod
    def record(self, model: nn.Module) -> dict:
        """Plain data (str, int, float, lists, dicts) from which ``rebuild`` makes the same
        architecture; it holds ``input``, one example's input shape."""

    @abc.abstractmethod
    def rebuild(self, record: dict) -> nn.Module:
        """The architecture of a ``record`` (weights uninitialised: a state dict is loaded into it)."""

    def check(self, cfg: ModelConfig, shape: Shape) -> None:
        """Raise ``LotteryError`` (one line) for a model config this family cannot build."""

    def content(self, cfg: ModelConfig) -> str | None:
        """What names the weights a network starts from beyond its config (a pretrained
        checkpoint's digest), for the trial's identity; None when its config says it all."""
        return None

    def weight_types(self) -> dict[type, tuple[str, ...]]:
        """Module types of this family that hold a convolution's or projection's weights, beyond
        torch's own (``lottery.networks.PROJECTIONS``), with those parameters' names: what the
        per-weight criteria score (docs/design.md §3)."""
        return {}

    def block_types(self) -> dict[type, IdentityRule]:
        """The residual block types this family knows, each with its identity-shortcut rule: a
        user's own network built from them is pruned without naming its blocks."""
        return {}

    def narrowables(self, model: nn.Module) -> list[Narrowable]:
        """The convolutions whose filters a filter ticket may remove; ``LotteryError`` if none."""
        raise self._no_filters()

    def narrowed(self, model: nn.Module, keep: dict[str, list[int]]) -> nn.Module:
        """A new network keeping only the listed output channels of each narrowable convolution
        (a family whose ``narrowables`` finds some implements it)."""
        raise self._no_filters()

    def ones_input(self, model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """SynFlow's data-free input (docs/design.md §3): one example of all ones at the input
        (``shape``: one example's)."""
        return torch.ones(1, *shape, dtype=dtype, device=next(model.parameters()).device)

    def _no_filters(self) -> LotteryError:
        return LotteryError(f"structure=filter is not defined for model.family={self.name}: it has no "
                            "convolutions whose filters couple only within their block")


FAMILIES: Registry[Family] = Registry("model.family", group="model", base=ModelConfig, key="family")


def known_blocks() -> dict[type, IdentityRule]:
    """Every block type some family knows, with its identity-shortcut rule."""
    out: dict[type, IdentityRule] = {}
    for family in FAMILIES.values():
        out.update(family.block_types())
    return out
