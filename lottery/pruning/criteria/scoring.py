"""The scoring API: a registered criterion run on a network, by name, the way every caller needs
it — on a copy, in full fp32, with torch's generator seeded by the trial's seed and restored
after — and its scores checked (one per removable block or filter, finite) before anything is
removed."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lottery import networks
from lottery.config import CriterionConfig
from lottery.errors import LotteryError
from lottery.pruning.criteria.base import CRITERIA, ScoringSet, filter_criteria
from lottery.pruning.criteria.weights import aggregate_blocks, aggregate_filters
from lottery.training.devices import exact_matmuls


def _run(fn, name: str, model: nn.Module, scoring, seed: int, cfg):
    """The criterion on a copy of the network (scoring may switch modes, cast or overwrite
    weights), in full fp32 (no TF32 on a GPU: near-ties rank as on a CPU), with torch's random
    state seeded by ``seed`` and restored after: the scores depend on the seed alone, whatever
    ran before in the process."""
    crit = CRITERIA[name]
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.grad = None
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with exact_matmuls(), torch.random.fork_rng(devices=gpus):  # seeding reseeds every GPU: restore them all
        torch.manual_seed(seed)
        return fn(work, scoring if crit.needs_data else None, cfg, seed)


def _finite(name: str, scores: list[torch.Tensor], what: str, labels: list) -> None:
    """Refuse NaN or infinite scores: sorting them would remove arbitrary blocks or filters."""
    bad = [label for label, s in zip(labels, scores) if not torch.isfinite(s).all()]
    if bad:
        raise LotteryError(f"criterion {name} gave NaN or infinite scores for {what} [{', '.join(map(str, bad))}]; "
                           "nothing was removed (check the weights it scores, e.g. a diverged network, or choose "
                           "another criterion)")


def _block_scores(name: str, model: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    scores = scores.detach().double().cpu()
    removable = networks.removable_paths(model)
    if scores.shape != (len(removable),):
        raise RuntimeError(f"criterion {name} returned shape {tuple(scores.shape)}, expected ({len(removable)},)")
    _finite(name, list(scores), "blocks", removable)
    return scores


def _filter_scores(name: str, model: nn.Module, filters: list[torch.Tensor]) -> list[torch.Tensor]:
    filters = [s.detach().double().cpu() for s in filters]
    _finite(name, filters, "the filters of", [n.conv for n in networks.narrowables(model)])
    return filters


def _needs_filters(name: str) -> None:
    if CRITERIA[name].filters is None:
        raise LotteryError(f"criterion {name} scores blocks only; structure=filter takes one of: "
                           f"{', '.join(filter_criteria())}")


def score_blocks(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                 seed: int) -> torch.Tensor:
    """Scores of the removable blocks; the model itself is never modified (a copy is scored)."""
    return _block_scores(name, model, _run(CRITERIA[name].blocks, name, model, scoring, seed, cfg))


def score_filters(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                  seed: int) -> list[torch.Tensor]:
    """Scores of every block's first-convolution filters (one tensor per block)."""
    _needs_filters(name)
    return _filter_scores(name, model, _run(CRITERIA[name].filters, name, model, scoring, seed, cfg))


def score_blocks_and_filters(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                             seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both granularities at once: a per-weight criterion (GraSP's double backprop, say) is
    computed once and aggregated twice."""
    crit = CRITERIA[name]
    if crit.per_weight is None:
        return score_blocks(name, model, scoring, cfg, seed), score_filters(name, model, scoring, cfg, seed)
    weights = _run(crit.per_weight, name, model, scoring, seed, cfg)
    return (_block_scores(name, model, aggregate_blocks(model, weights, cfg.aggregate)),
            _filter_scores(name, model, aggregate_filters(model, weights, cfg.aggregate)))


def score_weights(name: str, model: nn.Module, scoring: ScoringSet | None, cfg: CriterionConfig,
                  seed: int) -> dict[str, torch.Tensor]:
    """The per-weight scores of a per-weight criterion (CPU, float64), keyed by parameter name."""
    weights = _run(CRITERIA[name].per_weight, name, model, scoring, seed, cfg)
    out = {k: v.detach().double().cpu() for k, v in weights.items()}
    _finite(name, list(out.values()), "the weights", list(out))
    return out
