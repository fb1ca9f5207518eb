"""Running a network as the criteria and measurements read it, through forward hooks that leave
it as it was: a block skipped (it passes its input on: KL's "network without the block"), the
blocks' inputs and outputs, the penultimate features (the classifier's input, for CKA), and the
mode gradient criteria score in.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lottery.networks.anatomy import head


def batch_statistics(model: nn.Module) -> nn.Module:
    """The network as gradient criteria score it: normalisation layers in training mode (batch
    statistics, as at initialization the running ones mean nothing), everything else in eval
    mode, so no dropout, stochastic depth or other randomness moves the scores."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return model


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


def block_ends(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Input and output of the given blocks for one batch (forward hooks, no grad)."""
    out, hooks = {}, []
    for path in paths:
        hooks.append(model.get_submodule(path).register_forward_hook(
            lambda m, a, y, p=path: out.__setitem__(p, (a[0], y))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def block_outputs(model: nn.Module, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the given blocks for one batch of images (forward hooks, no grad)."""
    return {p: y for p, (_, y) in block_ends(model, x, paths).items()}
