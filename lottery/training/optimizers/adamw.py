"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, applied to the weights of
convolutions and linear maps only (``decayed``). How transformers (language models, ViT, DeiT) and
ConvNeXt are trained. Its state (both moments and the step count) is what a rewound ticket keeps
by default: a fresh AdamW mid-schedule restarts its bias correction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from lottery.config import OptimConfig, bad_value, opt
from lottery.training.optimizers.base import OPTIMIZERS, Optimizer, split_by_decay


@dataclass
class AdamWSettings(OptimConfig):
    lr: float = opt(1e-3, "peak learning rate: reached after the warm-up, then decayed by the schedule; > 0")
    weight_decay: float = opt(0.05, "decoupled weight decay (x lr per step) of the convolution and linear weights, "
                                    ">= 0; never of norms, biases, embeddings, tokens or layer scales")
    betas: List[float] = opt(help="(beta1, beta2): decay rates of the first and second moment estimates, in [0, 1)",
                             factory=lambda: [0.9, 0.999])
    eps: float = opt(1e-8, "added to the second moment's root, > 0")
    rewind_state: bool = opt(True, "a ticket rewound to theta_i starts from the dense run's optimizer state at i "
                                   "(its weights' share of both moments, and the step count); false: a fresh AdamW")


@OPTIMIZERS.registered(AdamWSettings)
class AdamW(Optimizer):
    name = "adamw"
    doc = "AdamW, decay on convolution and linear weights only (transformers, ConvNeXt)"

    def groups(self, model: nn.Module, o: AdamWSettings) -> list[dict]:
        return split_by_decay(model, o)

    def build(self, groups: list[dict], o: AdamWSettings, lr, fused: bool | None,
              capturable: bool) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas), eps=o.eps, fused=fused, capturable=capturable)

    def check(self, o: AdamWSettings) -> None:
        super().check(o)
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise bad_value("optim.betas", list(o.betas), "must be two numbers in [0, 1)")
        if o.eps <= 0:
            raise bad_value("optim.eps", o.eps, "must be > 0")
