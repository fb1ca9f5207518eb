"""SGD with (Nesterov) momentum and L2 weight decay on every parameter: the paper's recipe for
CIFAR ResNets (He et al. 2016), and torchvision's for ResNets and MobileNetV2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lottery.config import OptimConfig, bad_value, opt
from lottery.training.optimizers.base import OPTIMIZERS, Optimizer


@dataclass
class SgdSettings(OptimConfig):
    momentum: float = opt(0.9, "momentum, in [0, 1)")
    nesterov: bool = opt(True, "Nesterov momentum")


@OPTIMIZERS.registered(SgdSettings)
class Sgd(Optimizer):
    name = "sgd"
    doc = "SGD with momentum, weight decay on every parameter (the paper's recipe)"

    def groups(self, model: nn.Module, o: SgdSettings) -> list[dict]:
        return [{"params": list(model.parameters()), "weight_decay": o.weight_decay}]

    def build(self, groups: list[dict], o: SgdSettings, lr, fused: bool | None,
              capturable: bool) -> torch.optim.Optimizer:  # SGD's fused step captures as it is
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, fused=fused)

    def check(self, o: SgdSettings) -> None:
        super().check(o)
        if not 0 <= o.momentum < 1:
            raise bad_value("optim.momentum", o.momentum, "must be in [0, 1)")
