"""How alike two networks compute: linear CKA (Kornblith et al. 2019) of their penultimate
features on the same images (docs/design.md §7)."""

from __future__ import annotations

import torch
from torch import nn

from lottery import networks
from lottery.config import TrialConfig
from lottery.training.batches import eval_batches
from lottery.training.data import Dataset


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two (n, features) representations."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


@torch.no_grad()
def features(model: nn.Module, batches) -> torch.Tensor:
    model.eval()
    return torch.cat([networks.features(model, x).float().cpu() for x, _ in batches])


def cka_to_dense(ticket: nn.Module, dense: nn.Module, data: Dataset, cfg: TrialConfig) -> float:
    """Linear CKA of penultimate features on ``measure.cka_images`` class-balanced test images."""
    split = data.subset(data.test, cfg.measure.cka_images)
    batches = list(eval_batches(data, split, cfg.train.eval_batch_size, cfg.train.channels_last))
    return linear_cka(features(ticket, batches), features(dense, batches))
