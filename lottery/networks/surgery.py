"""Surgery on ordinary ``nn.Module`` networks by module path: what the module families
(torchvision, custom) share.

A removed block is replaced by ``nn.Identity`` (parameter-free, no computation), so every kept
module keeps its path and its weights their names, and the dense network's theta_i maps onto a
ticket by name. A narrowed convolution is rebuilt with the kept output channels, its
normalisation with the same channels and the next convolution with them as input channels. The
architecture record lives on the network (``lottery_arch``) and every edit returns a network
whose record says what was removed and narrowed, in the dense network's paths.
"""

from __future__ import annotations

import abc
import copy

import torch
from torch import nn

from lottery.errors import LotteryError
from lottery.networks.base import Family, Narrowable


def blocks_found(model: nn.Module, types) -> list[tuple[str, nn.Module]]:
    """Every module of one of ``types``, in registration (forward) order, nested ones excluded."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, tuple(types)) and not any(name.startswith(f"{p}.") for p, _ in out):
            out.append((name, m))
    return out


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _kept(tensor: torch.Tensor, dim: int, idx: torch.Tensor) -> nn.Parameter | torch.Tensor:
    return tensor.detach().index_select(dim, idx.to(tensor.device)).clone()


def _conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Conv2d:
    """The convolution with only the given output (or input) channels, weights copied."""
    weight = conv.weight
    if out_idx is not None:
        weight = _kept(weight, 0, out_idx)
    if in_idx is not None:
        weight = _kept(weight, 1, in_idx)
    with torch.device(conv.weight.device):
        new = nn.Conv2d(weight.shape[1] * conv.groups, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    new.weight = nn.Parameter(weight.clone(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach().clone() if out_idx is None else _kept(conv.bias, 0, out_idx))
    return new


def _norm(norm: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    with torch.device(norm.weight.device):
        new = type(norm)(len(idx), norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    state = {k: (_kept(v, 0, idx) if v.dim() else v.clone()) for k, v in norm.state_dict().items()}
    new.load_state_dict(state)
    return new


def narrow(model: nn.Module, n: Narrowable, channels: list[int]) -> None:
    """In place: keep ``channels`` of the convolution ``n.conv`` (its norm and the next conv's input)."""
    idx = torch.as_tensor(channels, dtype=torch.long)
    replace_module(model, n.conv, _conv(model.get_submodule(n.conv), out_idx=idx))
    replace_module(model, n.norm, _norm(model.get_submodule(n.norm), idx))
    replace_module(model, n.next, _conv(model.get_submodule(n.next), in_idx=idx))


class ModuleFamily(Family):
    """A family of ordinary modules: ``construct`` builds the dense network of an architecture
    record; finding the blocks of its ``block_types``, narrowing the inner convolutions its
    ``inner_convs`` name, removal and rebuilding are shared."""

    def inner_convs(self) -> dict[type, list[tuple[str, str, str]]]:
        """Block types whose inner convolutions a filter ticket may narrow: (conv, its norm, the
        next conv), relative to the block."""
        return {}

    def candidates(self, model):
        rules = self.block_types()
        found = blocks_found(model, rules)
        if not found:
            kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith(self.name)})
            raise LotteryError(f"{model.lottery_arch['arch']} has no residual blocks of a registered type "
                               f"({', '.join(t.__name__ for t in rules)}); its block types are "
                               f"{', '.join(kinds) or 'none'}: use model=custom with model.block_types or model.blocks")
        return [(path, rules[type(m)](m)) for path, m in found]

    def narrowables(self, model):
        if not self.inner_convs():
            return super().narrowables(model)  # the family has no filters to narrow: one line
        out, convs = [], self.inner_convs()
        for path, block in blocks_found(model, convs):
            for conv, norm, nxt in convs[type(block)]:
                c, n = block.get_submodule(conv), block.get_submodule(nxt)
                if c.groups == 1 and n.groups == 1:
                    out.append(Narrowable(f"{path}.{conv}", f"{path}.{norm}", f"{path}.{nxt}", path, c.out_channels))
        if not out:
            raise LotteryError(f"structure=filter narrows the inner convolutions of ResNet blocks (BasicBlock, "
                               f"Bottleneck, ungrouped); {model.lottery_arch['arch']} has none: use structure=layer")
        return out

    def label(self, cfg) -> str:
        """The model's name, else its architecture's (``model.arch``)."""
        return cfg.name or cfg.arch

    @abc.abstractmethod
    def arch(self, cfg, shape) -> dict:
        """The dense architecture record of a model config at the data's shape (``input``,
        ``classes``, ``removed`` and ``widths`` are added to it)."""

    @abc.abstractmethod
    def construct(self, arch: dict) -> nn.Module:
        """The dense network of a record (its ``removed`` and ``widths`` are applied afterwards)."""

    def build(self, cfg, shape):
        arch = {**self.arch(cfg, shape), "input": list(shape.input), "classes": shape.classes, "removed": [],
                "widths": {}}
        net = self.construct(arch)
        net.lottery_arch = arch
        return net

    def without(self, model, paths):
        new = copy.deepcopy(model)
        for path in paths:
            replace_module(new, path, nn.Identity())
        new.lottery_arch = {**model.lottery_arch, "removed": sorted({*model.lottery_arch["removed"], *paths})}
        return new

    def narrowed(self, model, keep):
        new = copy.deepcopy(model)
        by_conv = {n.conv: n for n in self.narrowables(model)}
        for conv, channels in keep.items():
            narrow(new, by_conv[conv], channels)
        new.lottery_arch = {**model.lottery_arch,
                            "widths": {**model.lottery_arch["widths"], **{c: len(k) for c, k in keep.items()}}}
        return new

    def record(self, model):
        return copy.deepcopy(model.lottery_arch)

    def rebuild(self, record):
        net = self.construct(record)
        net.lottery_arch = {**record, "removed": [], "widths": {}}
        net.lottery_family = self.name
        if record["removed"]:
            net = self.without(net, record["removed"])
        if record["widths"]:
            net = self.narrowed(net, {conv: list(range(w)) for conv, w in record["widths"].items()})
        return net
