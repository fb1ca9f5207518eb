"""Criteria read from the blocks' output feature maps: HRank, expectABS, PLS-VIP and KL.

They score a network as it is used for inference (eval mode: BN running statistics), over the
scoring set in chunks (``block_statistics``); every computation is batched over images and
channels. Block outputs are read with forward hooks, so they work on every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lottery import networks
from lottery.config import CriterionConfig, opt
from lottery.pruning.criteria.base import IMAGES, per_block
from lottery.pruning.criteria.block_statistics import block_statistic, removal_statistic


@dataclass
class PlsSettings(CriterionConfig):
    components: int = opt(10, "number of PLS components")


def block_outputs(model, x: torch.Tensor, paths: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of ``paths`` for one batch: what PLS pools (a name of its own, so a test can feed it)."""
    return networks.block_outputs(model, x, paths)


def pooled(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature maps averaged over space, (N, T, D) tokens over tokens: (N, features)."""
    return y.mean((2, 3)) if y.dim() == 4 else y.mean(1)


def feature_map_rank(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,): mean over channels of rank(H x W map) / min(H, W)."""
    n, c, h, w = maps.shape
    ranks = torch.linalg.matrix_rank(maps.reshape(n * c, h, w).float())  # float32 tolerance
    return ranks.reshape(n, c).double().mean(1) / min(h, w)


@per_block("hrank", layout="maps", tasks=IMAGES)
def hrank(model, scoring, cfg, seed):
    """HRank (Lin et al. 2020): average rank of the block's output feature maps.

    Follows lmbxmu/HRank (rank_generation.py): the matrix rank of each channel's H x W map,
    averaged over images; here at the block output, averaged over channels and divided by
    min(H, W) so stages of different resolution compare (docs/design.md §3). Higher is kept.
    """
    return block_statistic(model, scoring, lambda x_in, y: feature_map_rank(y))


@per_block("expectabs", tasks=IMAGES)
def expectabs(model, scoring, cfg, seed):
    """expectABS (Tan & Motani 2020, DropNet): mean absolute activation of the block's output.

    The paper's expected absolute activation, taken over the scoring set and every output unit
    of the block, in eval mode; no normalisation. Higher is kept.
    """
    return block_statistic(model, scoring, lambda x_in, y: y.abs().flatten(1).mean(1))


def vip(x: np.ndarray, y: np.ndarray, components: int) -> np.ndarray:
    """Variable importance in projection of every column of ``x`` for a PLS fit to ``y``."""
    from sklearn.cross_decomposition import PLSRegression

    k = max(1, min(components, x.shape[0] - 1, x.shape[1]))
    pls = PLSRegression(n_components=k, scale=True).fit(x, y)
    t, w, q = pls.x_scores_, pls.x_weights_, pls.y_loadings_
    ss = (q**2).sum(0) * (t**2).sum(0)  # variance of y explained by each component
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    return np.sqrt(x.shape[1] * (wn**2 @ ss) / ss.sum())


@per_block("pls", settings=PlsSettings, tasks=IMAGES)
def pls(model, scoring, cfg: PlsSettings, seed):
    """PLS-VIP (Jordao et al. 2020): one PLS on every block's pooled output; mean VIP per block.

    Follows the paper's definition: global-average-pooled block outputs (tokens: averaged over
    tokens), concatenated, one PLS regression (scikit-learn, scaled) to one-hot labels, VIP per
    feature; a block's score is the mean VIP of its features (mean VIP^2 over all features is 1).
    Higher is kept.
    """
    model.eval()
    paths = networks.removable_paths(model)
    parts = {p: [] for p in paths}
    for x, _, _ in scoring.chunks():
        for p, y in block_outputs(model, x, paths).items():
            parts[p].append(pooled(y).double().cpu())
    feats = [torch.cat(parts[p]) for p in paths]
    x = torch.cat(feats, 1).numpy()
    labels = scoring.y.cpu().numpy()
    onehot = np.eye(networks.classes(model))[labels]
    v = vip(x, onehot, cfg.components)
    bounds = np.cumsum([0] + [f.shape[1] for f in feats])
    return torch.tensor([v[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])], dtype=torch.float64)


@per_block("kl")
def kl(model, scoring, cfg, seed):
    """KL (Luo & Wu 2020): KL(full || without the block), mean over images.

    Follows the paper's definition (no public reference code): KL divergence of the network's
    softmax output with the block removed from the full network's, from logits with log_softmax
    in float64, averaged over the scoring set (a language model's: over its sequences' positions, each
    a next-token distribution); a block whose removal changes the output least
    scores lowest. A removable block's shortcut is the identity, so the network without it is
    the network with the block passing its input on (``lottery.networks.skipping``).
    """
    return removal_statistic(model, scoring, lambda out, y, full: F.kl_div(
        scoring.task.log_probs(out), full, log_target=True, reduction="none").sum(-1),  # per image, or token
        reference=scoring.task.log_probs)
