"""Criteria read from the blocks' output feature maps: HRank, expectABS, PLS-VIP and KL.

They score a network as it is used for inference (eval mode: BN running statistics), over the
scoring set in chunks; every computation is batched over images and channels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lottery.criteria import register


def block_outputs(model, x: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
    """Outputs of the given blocks for one chunk of images (forward hooks, no grad)."""
    out, hooks = {}, []
    for i in blocks:
        hooks.append(model.blocks[i].register_forward_hook(lambda m, a, y, i=i: out.__setitem__(i, y)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def per_chunk_mean(model, scoring, statistic) -> torch.Tensor:
    """Mean over the scoring set of ``statistic(feature_map) -> (N,)`` for each removable block."""
    model.eval()
    removable = model.plan.removable
    totals = torch.zeros(len(removable), dtype=torch.float64)
    for x, _, w in scoring.chunks():
        feats = block_outputs(model, x, removable)
        totals += torch.stack([statistic(feats[i]).double().mean().cpu() for i in removable]) * w
    return totals


def feature_map_rank(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,): mean over channels of rank(H x W map) / min(H, W)."""
    n, c, h, w = maps.shape
    ranks = torch.linalg.matrix_rank(maps.reshape(n * c, h, w).float())  # float32 tolerance
    return ranks.reshape(n, c).double().mean(1) / min(h, w)


@register("hrank")
def hrank(model, scoring, cfg, seed):
    """HRank (Lin et al. 2020): average rank of the block's output feature maps.

    Follows lmbxmu/HRank (rank_generation.py): the matrix rank of each channel's H x W map,
    averaged over images; here at the block output, averaged over channels and divided by
    min(H, W) so stages of different resolution compare (SPEC §3). Higher is kept.
    """
    return per_chunk_mean(model, scoring, feature_map_rank)


@register("expectabs")
def expectabs(model, scoring, cfg, seed):
    """expectABS (Tan & Motani 2020, DropNet): mean absolute activation of the block's output.

    The paper's expected absolute activation, taken over the scoring set and every output unit
    of the block, in eval mode; no normalisation. Higher is kept.
    """
    return per_chunk_mean(model, scoring, lambda y: y.abs().flatten(1).mean(1))


def vip(x: np.ndarray, y: np.ndarray, components: int) -> np.ndarray:
    """Variable importance in projection of every column of ``x`` for a PLS fit to ``y``."""
    from sklearn.cross_decomposition import PLSRegression

    k = max(1, min(components, x.shape[0] - 1, x.shape[1]))
    pls = PLSRegression(n_components=k, scale=True).fit(x, y)
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    ss = (q**2).sum(0) * (t**2).sum(0)  # variance of y explained by each component
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    return np.sqrt(x.shape[1] * (wn**2 @ ss) / ss.sum())


@register("pls")
def pls(model, scoring, cfg, seed):
    """PLS-VIP (Jordao et al. 2020): one PLS on every block's pooled output; mean VIP per block.

    Follows the paper's definition: global-average-pooled block outputs, concatenated, one PLS
    regression (scikit-learn, scaled) to one-hot labels, VIP per feature; a block's score is the
    mean VIP of its features (mean VIP^2 over all features is 1). Higher is kept.
    """
    model.eval()
    removable = model.plan.removable
    pooled = {i: [] for i in removable}
    for x, _, _ in scoring.chunks():
        for i, y in block_outputs(model, x, removable).items():
            pooled[i].append(y.mean((2, 3)).double().cpu())
    feats = [torch.cat(pooled[i]) for i in removable]
    x = torch.cat(feats, 1).numpy()
    labels = scoring.y.cpu().numpy()
    onehot = np.eye(int(model.fc.out_features))[labels]
    v = vip(x, onehot, cfg.components)
    bounds = np.cumsum([0] + [f.shape[1] for f in feats])
    return torch.tensor([v[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])], dtype=torch.float64)


@register("kl")
def kl(model, scoring, cfg, seed):
    """KL (Luo & Wu 2020): KL(full || without the block's residual branch), mean over images.

    Follows the paper's definition (no public reference code): KL divergence of the network's
    softmax output with the block removed from the full network's, from logits with log_softmax
    in float64, averaged over the scoring set; a block whose removal changes the output least
    scores lowest. The network is run once; for each block the tail after it is re-run from its cached input
    (a removable block's shortcut is the identity, so skipping its branch passes the input on).
    """
    model.eval()
    removable = model.plan.removable
    totals = torch.zeros(len(removable), dtype=torch.float64)
    with torch.no_grad():
        for x, _, w in scoring.chunks():
            inputs = [model.stem(x)]
            for block in model.blocks:
                inputs.append(block(inputs[-1]))
            full = F.log_softmax(model.fc(F.adaptive_avg_pool2d(inputs[-1], 1).flatten(1)).double(), 1)
            for k, i in enumerate(removable):
                h = model.blocks[i + 1:](inputs[i])
                dropped = F.log_softmax(model.fc(F.adaptive_avg_pool2d(h, 1).flatten(1)).double(), 1)
                per_image = F.kl_div(dropped, full, log_target=True, reduction="none").sum(1)
                totals[k] += per_image.mean().cpu() * w
    return totals
