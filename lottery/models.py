"""CIFAR ResNet v1 (He et al. 2016) built from an explicit plan of blocks.

The plan is a flat list of block specifications, so a shallower (layer ticket) or narrower
(filter ticket) network is just another plan: surgery builds it and copies weights over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64)


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
    shortcut: str = "B"
    num_classes: int = 10
    stem_ch: int = 16

    @property
    def removable(self) -> list[int]:
        """Indices (into ``blocks``) of the blocks that may be removed."""
        return [i for i, b in enumerate(self.blocks) if b.removable]

    def stage_sizes(self) -> list[int]:
        return [sum(b.stage == s for b in self.blocks) for s in range(len(WIDTHS))]

    @property
    def max_removable(self) -> int:
        """Most blocks removable at once while every stage keeps at least one block."""
        total = 0
        for s in range(len(WIDTHS)):
            stage = [b for b in self.blocks if b.stage == s]
            removable = sum(b.removable for b in stage)
            total += removable - (1 if removable == len(stage) else 0)
        return total

    def record(self) -> dict:
        """Plain data (ints and strings): saved beside a ticket's weights, loadable with weights_only."""
        return {"blocks": [dict(vars(b)) for b in self.blocks], "shortcut": self.shortcut,
                "num_classes": self.num_classes, "stem_ch": self.stem_ch}

    @classmethod
    def from_record(cls, r: dict) -> "Plan":
        return cls(tuple(BlockSpec(**b) for b in r["blocks"]), r["shortcut"], r["num_classes"], r["stem_ch"])

    def without(self, indices) -> "Plan":
        drop = set(indices)
        return replace(self, blocks=tuple(b for i, b in enumerate(self.blocks) if i not in drop))


def resnet_plan(depth: int, shortcut: str = "B", num_classes: int = 10) -> Plan:
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
    return Plan(tuple(blocks), shortcut, num_classes, WIDTHS[0])


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
        # When False the residual branch is skipped: y = relu(x) = x (x is post-ReLU), which is
        # exactly what removing the block does. Tests use it to check surgery against masking.
        self.branch_enabled = True

    def residual(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        if not self.branch_enabled:
            return F.relu(self.shortcut(x))
        return F.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan
        self.stem = nn.Sequential(
            nn.Conv2d(3, plan.stem_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(plan.stem_ch), nn.ReLU()
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

    def features(self, x):
        """Penultimate features (after global average pooling)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def build(plan: Plan) -> ResNet:
    return ResNet(plan)


def count_filters(model: nn.Module) -> int:
    """Total output channels over every convolution (stem, block convs, projections)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
