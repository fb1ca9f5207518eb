"""Gradient saliencies: SNIP (Lee et al. 2019), GraSP (Wang et al. 2020) and SynFlow (Tanaka et
al. 2020), each per weight of the weights its definition names (docs/design.md §3).

SNIP and GraSP are computed with batch statistics in BatchNorm (as at initialization the running
statistics mean nothing) and dropout and stochastic depth off (``networks.batch_statistics``), on
a copy of the model, over the whole scoring set in chunks whose losses are weighted so that the
gradient equals the full-set gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lottery import networks
from lottery.config import CriterionConfig, opt
from lottery.pruning.criteria.base import per_weight
from lottery.pruning.criteria.weights import scored_parameters


@dataclass
class GraspSettings(CriterionConfig):
    temperature: float = opt(200.0, "logits divided by this temperature")


def loss_gradient(model, params: list[torch.Tensor], scoring, temperature: float = 1.0):
    """dL/dtheta of the task's mean cross-entropy of logits / T over the scoring set."""
    grads = [torch.zeros_like(p) for p in params]
    for x, y, w in scoring.chunks():
        loss = scoring.task.loss(model(x) / temperature, y) * w
        for g, d in zip(grads, torch.autograd.grad(loss, params)):
            g += d
    return grads


def hessian_gradient_product(model, params: list[torch.Tensor], scoring, temperature: float):
    """H g by double backprop, with g and H of the same loss (GraSP's two passes), both through
    attention's math kernel: the fused ones have no double backward, and one kernel for both
    passes keeps them the same function."""
    with sdpa_kernel(SDPBackend.MATH):
        g = loss_gradient(model, params, scoring, temperature)
    hg = [torch.zeros_like(p) for p in params]
    for x, y, w in scoring.chunks():
        with sdpa_kernel(SDPBackend.MATH):
            loss = scoring.task.loss(model(x) / temperature, y) * w
            grad = torch.autograd.grad(loss, params, create_graph=True)
        z = sum((gi.detach() * di).sum() for gi, di in zip(g, grad))
        for acc, d in zip(hg, torch.autograd.grad(z, params)):
            acc += d
    return hg


@per_weight("snip", additive=True)
def snip(model, scoring, cfg, seed):
    """SNIP connection sensitivity |theta * dL/dtheta| per weight (Lee et al. 2019).

    Follows namhoonlee/snip-public (snip/prune.py): the gradient of the mean cross-entropy over
    the scoring set, with batch statistics; sign: none (absolute value); the reference divides by
    the sum of all scores, which leaves the ranking unchanged and is omitted.
    """
    networks.batch_statistics(model)
    named = scored_parameters(model, cfg.weights)
    grads = loss_gradient(model, list(named.values()), scoring)
    return {k: (p.detach() * g).abs() for (k, p), g in zip(named.items(), grads)}


@per_weight("grasp", additive=True, settings=GraspSettings)
def grasp(model, scoring, cfg: GraspSettings, seed):
    """GraSP gradient-flow score theta * Hg per weight (Wang et al. 2020); the lowest go first.

    Follows alecwangcq/GraSP (pruner/GraSP.py): logits divided by the temperature (200), g and
    Hg by double backprop over the same batches. Sign: the reference scores -theta * Hg and
    removes the largest, i.e. the weights whose theta * Hg is lowest, which is what removing the
    lowest of theta * Hg here does; its normalisation by |sum| leaves the ranking unchanged.
    """
    networks.batch_statistics(model)
    named = scored_parameters(model, cfg.weights)
    hg = hessian_gradient_product(model, list(named.values()), scoring, cfg.temperature)
    return {k: p.detach() * h for (k, p), h in zip(named.items(), hg)}


@per_weight("synflow", needs_data=False, additive=True)
def synflow(model, scoring, cfg, seed):
    """SynFlow (Tanaka et al. 2020): data-free |theta * dR/dtheta|, R = sum of the output.

    Follows ganguli-lab/Synaptic-Flow (Pruners/pruners.py, SynFlow): the absolute value of the
    whole state, BatchNorm's running statistics included, in float64, eval mode, one all-ones
    input; sign: none (absolute value); no normalisation. A language model's input is token ids,
    for which all ones has no meaning: its all-ones input enters after the embedding, into the
    first decoder layer (``networks.ones_input``; docs/design.md §3).
    """
    model.double().eval()
    with torch.no_grad():
        for value in model.state_dict().values():  # parameters and buffers, like the reference
            value.abs_()
    named = scored_parameters(model, cfg.weights)
    x = networks.ones_input(model, torch.float64)
    grads = torch.autograd.grad(model(x).sum(), list(named.values()))
    return {k: (p.detach() * g).abs() for (k, p), g in zip(named.items(), grads)}
