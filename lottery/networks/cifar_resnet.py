"""The paper's family: CIFAR ResNet v1 (He et al. 2016), built from an explicit plan of blocks.

The plan is a flat list of block specifications, so a shallower (layer ticket) or narrower
(filter ticket) network is just another plan: surgery builds it and copies the weights over. The
plan is also the architecture record a ticket is rebuilt from.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from lottery.config import ModelConfig, bad_value, opt
from lottery.networks.base import FAMILIES, Family, Narrowable, Shape

WIDTHS = (16, 32, 64)


class Shortcut(enum.Enum):
    A = "A"  # parameter-free: subsample and zero-pad the new channels
    B = "B"  # 1x1 convolution projection + BN


@dataclass
class CifarResNetSettings(ModelConfig):
    depth: int = opt(32, "depth 6n+2: 20, 32, 44, 56, 110")
    shortcut: Shortcut = opt(Shortcut.B, "downsampling shortcut: B = 1x1 projection + BN, A = zero-pad")


@dataclass(frozen=True)
class BlockSpec:
    """One basic block: conv3x3(in->mid, stride)-BN-ReLU-conv3x3(mid->out)-BN, add, ReLU."""

    stage: int
    in_ch: int
    mid_ch: int
    out_ch: int
    stride: int

    @property
    def removable(self) -> bool:
        """Identity shortcut: input and output shapes match, so the block can vanish."""
        return self.stride == 1 and self.in_ch == self.out_ch


@dataclass(frozen=True)
class Plan:
    blocks: tuple[BlockSpec, ...]
    input: tuple[int, int, int]  # (C, H, W) of one image, as the data gives it
    shortcut: str = "B"
    num_classes: int = 10
    stem_ch: int = 16

    @property
    def removable(self) -> list[int]:
        """Indices (into ``blocks``) of the blocks that may be removed."""
        return [i for i, b in enumerate(self.blocks) if b.removable]

    def record(self) -> dict:
        """Plain data (ints and strings): saved beside a ticket's weights, loadable with weights_only."""
        return {"blocks": [dict(vars(b)) for b in self.blocks], "shortcut": self.shortcut,
                "num_classes": self.num_classes, "stem_ch": self.stem_ch, "input": list(self.input)}

    @classmethod
    def from_record(cls, r: dict) -> "Plan":
        return cls(tuple(BlockSpec(**b) for b in r["blocks"]), tuple(r["input"]), r["shortcut"], r["num_classes"],
                   r["stem_ch"])

    def without(self, indices) -> "Plan":
        drop = set(indices)
        return replace(self, blocks=tuple(b for i, b in enumerate(self.blocks) if i not in drop))

    def narrowed(self, widths: dict[int, int]) -> "Plan":
        """The plan with each listed block's first convolution cut to the given width."""
        return replace(self, blocks=tuple(replace(b, mid_ch=widths[i]) if i in widths else b
                                          for i, b in enumerate(self.blocks)))


def resnet_plan(depth: int, shortcut: str, num_classes: int, input: tuple[int, int, int]) -> Plan:
    """The plan of the CIFAR ResNet of the given depth (6n + 2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    blocks, in_ch = [], WIDTHS[0]
    for stage, width in enumerate(WIDTHS):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            blocks.append(BlockSpec(stage, in_ch, width, width, stride))
            in_ch = width
    return Plan(tuple(blocks), tuple(input), shortcut, num_classes, WIDTHS[0])


class ZeroPadShortcut(nn.Module):
    """Option A: parameter-free shortcut, subsample spatially and zero-pad the new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, spec: BlockSpec, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(spec.in_ch, spec.mid_ch, 3, spec.stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.mid_ch)
        self.conv2 = nn.Conv2d(spec.mid_ch, spec.out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(spec.out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if not spec.removable:
            if shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(spec.in_ch, spec.out_ch, 1, spec.stride, bias=False),
                    nn.BatchNorm2d(spec.out_ch),
                )
            else:
                self.shortcut = ZeroPadShortcut(spec.in_ch, spec.out_ch, spec.stride)

    def residual(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan
        self.lottery_family = CifarResNet.name
        self.stem = nn.Sequential(
            nn.Conv2d(plan.input[0], plan.stem_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(plan.stem_ch), nn.ReLU()
        )
        self.blocks = nn.Sequential(*(BasicBlock(b, plan.shortcut) for b in plan.blocks))
        self.fc = nn.Linear(plan.blocks[-1].out_ch, plan.num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """Kaiming-normal convolutions (fan_out), BN to identity: the usual CIFAR ResNet init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x):
        # Global average pooling as a mean: its backward is deterministic on CUDA (adaptive pooling's is not).
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def build(plan: Plan) -> ResNet:
    return ResNet(plan)


def resnet(depth: int, shape: Shape, shortcut: str = "B") -> ResNet:
    """The CIFAR ResNet of ``depth`` for inputs and classes of ``shape`` (freshly initialised)."""
    return build(resnet_plan(depth, shortcut, shape.classes, shape.input))


def remove_blocks(model: ResNet, blocks) -> ResNet:
    """A new ResNet without ``blocks`` (indices into ``model.plan.blocks``), every kept parameter
    and BN buffer copied, on the model's device (see ``lottery.networks.without``)."""
    drop = sorted(set(blocks))
    not_removable = [i for i in drop if i not in model.plan.removable]
    if not_removable:
        raise ValueError(f"blocks {not_removable} change shape and cannot be removed")
    new_index = {}
    for old in range(len(model.plan.blocks)):
        if old not in drop:
            new_index[old] = len(new_index)

    def rename(key: str) -> str | None:
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if not m:
            return key
        old = int(m.group(1))
        return None if old in drop else f"blocks.{new_index[old]}.{m.group(2)}"

    state = {}
    for key, value in model.state_dict().items():
        new_key = rename(key)
        if new_key is not None:
            state[new_key] = value.detach().clone()
    return _built_like(model, model.plan.without(drop), state)


def remove_filters(model: ResNet, keep: dict[int, list[int]]) -> ResNet:
    """A new, narrower ResNet keeping only the listed conv1 output channels of each block: conv1
    and bn1 lose the channels, conv2 the matching input channels; all else is copied."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, channels in keep.items():
        idx = torch.as_tensor(channels, dtype=torch.long, device=state[f"blocks.{i}.conv1.weight"].device)
        for name in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
            key = f"blocks.{i}.{name}"
            state[key] = state[key].index_select(0, idx)
        key = f"blocks.{i}.conv2.weight"
        state[key] = state[key].index_select(1, idx)
    return _built_like(model, model.plan.narrowed({i: len(c) for i, c in keep.items()}), state)


def _built_like(model: ResNet, plan: Plan, state: dict) -> ResNet:
    """The network of ``plan`` built directly on the model's device, holding ``state``."""
    with torch.device(next(model.parameters()).device):
        new = build(plan)
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


def _index(path: str) -> int:
    return int(path.split(".")[1])


@FAMILIES.registered(CifarResNetSettings)
class CifarResNet(Family):
    """model=resnet20..resnet110: depth 6n+2, three stages of 16/32/64 channels (docs/design.md §2)."""

    name = "cifar_resnet"

    def check(self, cfg: CifarResNetSettings, shape: Shape) -> None:
        try:
            resnet_plan(cfg.depth, cfg.shortcut.value, shape.classes, shape.input)
        except ValueError as e:
            raise bad_value("model.depth", cfg.depth, str(e)) from None

    def build(self, cfg: CifarResNetSettings, shape: Shape) -> nn.Module:
        return build(resnet_plan(cfg.depth, cfg.shortcut.value, shape.classes, shape.input))

    def label(self, cfg: CifarResNetSettings) -> str:
        return cfg.name or f"resnet{cfg.depth}"

    def candidates(self, model):
        return [(f"blocks.{i}", b.removable) for i, b in enumerate(model.plan.blocks)]

    def without(self, model, paths):
        return remove_blocks(model, [_index(p) for p in paths])

    def narrowables(self, model):
        return [Narrowable(f"blocks.{i}.conv1", f"blocks.{i}.bn1", f"blocks.{i}.conv2", f"blocks.{i}", b.mid_ch)
                for i, b in enumerate(model.plan.blocks)]

    def narrowed(self, model, keep):
        return remove_filters(model, {_index(conv): channels for conv, channels in keep.items()})

    def record(self, model):
        return model.plan.record()

    def rebuild(self, record):
        return build(Plan.from_record(record))
