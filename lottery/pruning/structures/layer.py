"""``structure=layer``: the paper's layer tickets — the lowest-scoring residual blocks removed
(every stage keeps one), at once or over rounds at the same weights, each round's smaller network
scored again; the rounds' record and the surgery that replays them on the dense network."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf
from torch import nn

from lottery import networks
from lottery.config import choice
from lottery.errors import LotteryError
from lottery.pruning.criteria import CRITERIA, score_blocks
from lottery.pruning.criteria.weights import scored_names
from lottery.pruning.modes import MODES
from lottery.pruning.selection import select_blocks, tied_blocks
from lottery.pruning.structures.base import STRUCTURES, Pruning, Request, Structure

log = logging.getLogger("lottery")


def blocks_per_round(count: int, rounds: int) -> list[int]:
    """``count`` blocks over ``rounds`` rounds as evenly as possible, the earlier rounds taking the one more."""
    base, extra = divmod(count, rounds)
    return [base + (r < extra) for r in range(rounds)]


def layers(req: Request) -> Pruning:
    """Remove the lowest-scoring residual blocks (every stage keeps one), in ``req.rounds`` rounds
    at the same weights: the smaller network is scored again after each round (no training is
    needed between them), and ``blocks.json`` holds every round's scores and choices."""
    c = req.cfg.criterion
    model, rounds = req.model, []
    for count in blocks_per_round(req.count, req.rounds):
        scores = score_blocks(c.name, model, req.scoring, c, req.cfg.seed)
        anatomy = networks.anatomy(model)
        removed = select_blocks(anatomy, scores, count)
        weights = {"weights": scored_names(model, c.weights)} if CRITERIA[c.name].per_weight else {}
        rounds.append({**chosen(anatomy, scores, removed), **weights, **_ties(req, model, scores, removed)})
        model = networks.without(model, removed)
    return in_rounds(req.model, rounds)


def starts_as_identity(block: nn.Module) -> bool:
    """Whether a block holds a normalisation whose scale is all zero (its branch then adds nothing)."""
    return any(isinstance(m, networks.NORMS) and m.weight is not None and not m.weight.detach().any()
               for m in block.modules())


def _ties(req: Request, model: nn.Module, scores, removed: list[str]) -> dict:
    """Nothing when the scores decide which blocks go; else one line (``criterion.ties=refuse``)
    or, with ``criterion.ties=index``, a warning and the tied blocks for the record and the run."""
    tied = tied_blocks(networks.anatomy(model), scores, removed)
    if not tied:
        return {}
    c, cfg = req.cfg.criterion, req.cfg
    where = "at initialization" if MODES[cfg.mode.name].scores_at_init else "on the trained weights"
    about = (f"are all {float(scores[0]):.3g}: it cannot tell the blocks apart" if bool((scores == scores[0]).all())
             else f"tie between the removed {removed} and the kept {tied}: block order, not the criterion, "
                  "decides which go")
    if choice(c.ties) == "index":
        log.warning("%s scores %s %s; criterion.ties=index lets block order decide (tagged ties on the run)",
                    c.name, where, about)
        return {"ties": tied}
    why, fixes = "", []
    if not model.get_submodule(networks.head(model)).weight.detach().any():
        why = f" (its classifier {networks.head(model)} is all zero, so no gradient reaches the blocks)"
        fixes += ["model.head_init=normal"] if "head_init" in cfg.model else []
    elif all(starts_as_identity(model.get_submodule(b.path)) for b in networks.anatomy(model).removable):
        why = " (each block's last normalisation starts at zero, so every block starts as the identity)"
        fixes += ["model.zero_init_last=false"] if "zero_init_last" in cfg.model else []
    telling = _telling(req, model, count=len(removed))
    fixes += [f"criterion={telling} (it tells these blocks apart)"] if telling else []
    fixes += ["mode=rewind (scoring the trained network)"] if not telling and MODES[cfg.mode.name].scores_at_init else []
    raise LotteryError(f"{c.name} scores of {networks.label(cfg.model)} {where} {about}{why}: use "
                       f"{', or '.join(fixes + ['criterion.ties=index to let block order decide (tagged on the run)'])}")


ALTERNATIVES = ("snip", "grasp", "kl", "block_influence", "loss_on_removal")  # tried in turn, cheapest reads first


def _telling(req: Request, model: nn.Module, count: int) -> str | None:
    """The first criterion of ``ALTERNATIVES`` other than the trial's, defined here, whose scores
    of ``model`` decide which ``count`` blocks go: the remedy a tie refusal names, tried, not guessed."""
    c, anatomy = req.cfg.criterion, networks.anatomy(model)
    if req.scoring is None:  # every alternative reads data
        return None
    for name in (n for n in ALTERNATIVES if n != c.name):
        if CRITERIA[name].tasks and req.scoring.task.name not in CRITERIA[name].tasks:
            continue
        cfg = OmegaConf.structured(CRITERIA.settings_of(name)(name=name, scoring_size=c.scoring_size,
                                                             batch_size=c.batch_size))
        try:
            scores = score_blocks(name, model, req.scoring, cfg, req.cfg.seed)
        except Exception:  # noqa: BLE001 - NaN scores, out of memory, undefined here: not a remedy
            continue
        if not tied_blocks(anatomy, scores, select_blocks(anatomy, scores, count)):
            return name
    return None


def in_rounds(dense: nn.Module, rounds: list[dict]) -> Pruning:
    """The pruning that removes each round's blocks (named in the network of that round) from the
    dense network in turn; its record holds every round and the removed blocks in the dense
    network's names."""
    model, gone = dense, []
    names = {b.path: b.path for b in networks.anatomy(model).blocks}  # a block's path now -> in the dense network
    for step in rounds:
        before = networks.anatomy(model)
        gone += [names[p] for p in step["removed"]]
        model = networks.without(model, step["removed"])
        names = dict(zip((b.path for b in networks.anatomy(model).blocks),
                         (names[b.path] for b in before.blocks if b.path not in step["removed"])))
    order = [b.path for b in networks.anatomy(dense).blocks]
    record = {**rounds[0], "removed": sorted(gone, key=order.index), "rounds": rounds}
    summary = "; ".join(f"block scores [{' '.join(f'{s:.3g}' for s in r['scores'])}] -> removing blocks {r['removed']}"
                        for r in rounds)
    label = f"p{len(gone)}" + (f"-{len(rounds)}rounds" if len(rounds) > 1 else "")
    steps = [r["removed"] for r in rounds]
    ties = [p for r in rounds for p in r.get("ties", [])]
    return Pruning(lambda m: _apply_removals(m, steps), record, {"blocks_removed": len(gone)}, label, "blocks.json",
                   summary, {"ties": f"index: block order chose among tied {ties}"} if ties else {})


def chosen(anatomy: networks.Anatomy, scores, removed: list[str]) -> dict:
    """What one scoring of the blocks chose: every removable block, its stage and score, the removed."""
    return {"removable": [b.path for b in anatomy.removable], "stage": [b.stage for b in anatomy.removable],
            "scores": scores.tolist(), "removed": removed}


def _apply_removals(model: nn.Module, steps: list[list[str]]) -> nn.Module:
    for removed in steps:
        model = networks.without(model, removed)
    return model


@STRUCTURES.registered()
class Layer(Structure):
    name = "layer"
    rounds = True

    def prune(self, req: Request) -> Pruning:
        return layers(req)
