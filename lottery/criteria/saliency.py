"""Gradient saliencies: SNIP (Lee et al. 2019) and GraSP (Wang et al. 2020).

Both are computed in training mode (batch statistics in BN, as at initialization the running
statistics mean nothing), on a copy of the model, over the whole scoring set in chunks whose
losses are weighted so that the gradient equals the full-set gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lottery.criteria import register
from lottery.criteria.weights import per_block, scored_parameters


def loss_gradient(model, params: list[torch.Tensor], scoring, temperature: float = 1.0):
    """dL/dtheta of the mean cross-entropy of logits / T over the scoring set."""
    grads = [torch.zeros_like(p) for p in params]
    for x, y, w in scoring.chunks():
        loss = F.cross_entropy(model(x) / temperature, y) * w
        for g, d in zip(grads, torch.autograd.grad(loss, params)):
            g += d
    return grads


def hessian_gradient_product(model, params: list[torch.Tensor], scoring, temperature: float):
    """H g by double backprop, with g and H of the same loss (GraSP's two passes)."""
    g = loss_gradient(model, params, scoring, temperature)
    hg = [torch.zeros_like(p) for p in params]
    for x, y, w in scoring.chunks():
        loss = F.cross_entropy(model(x) / temperature, y) * w
        grad = torch.autograd.grad(loss, params, create_graph=True)
        z = sum((gi.detach() * di).sum() for gi, di in zip(g, grad))
        for acc, d in zip(hg, torch.autograd.grad(z, params)):
            acc += d
    return hg


@register("snip")
def snip(model, scoring, cfg, seed):
    """SNIP connection sensitivity |theta * dL/dtheta|, summed per block."""
    model.train()
    named = scored_parameters(model, cfg.weights)
    grads = loss_gradient(model, list(named.values()), scoring)
    per_weight = {k: (p.detach() * g).abs() for (k, p), g in zip(named.items(), grads)}
    return per_block(model, per_weight, cfg.aggregate)


@register("grasp")
def grasp(model, scoring, cfg, seed):
    """GraSP gradient-flow score theta * Hg; like GraSP, the lowest theta*Hg is removed first."""
    model.train()
    named = scored_parameters(model, cfg.weights)
    hg = hessian_gradient_product(model, list(named.values()), scoring, cfg.temperature)
    per_weight = {k: p.detach() * h for (k, p), h in zip(named.items(), hg)}
    return per_block(model, per_weight, cfg.aggregate)
