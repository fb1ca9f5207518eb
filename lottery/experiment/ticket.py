"""A ticket of a trial: its blocks scored and chosen, the physically smaller network built from the
weights its mode names, and trained (resumable), one shot; ``lottery.experiment.imp`` does the same
in rounds."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lottery.experiment import dense
from lottery.experiment.context import Context
from lottery.experiment.design import Design
from lottery.experiment.identity import training_key
from lottery.measure import carbon
from lottery.pruning.criteria import ScoringSet
from lottery.pruning.structures import STRUCTURES, Pruning, Request, decisive
from lottery.tracking import runs
from lottery.tracking.store import Entry
from lottery.training.checkpoints import Trained
from lottery.training.optimizers import carried_state
from lottery.training.recipe import Recipe
from lottery.training.batches import scoring_set
from lottery.training.trainer import predict, train

log = logging.getLogger("lottery")


def scoring(ctx: Context) -> ScoringSet:
    """The trial's scoring set: class-balanced, unaugmented training examples drawn by its seed."""
    cfg = ctx.cfg
    return ScoringSet(*scoring_set(ctx.data, cfg.criterion.scoring_size, cfg.seed), cfg.criterion.batch_size,
                      ctx.data.task)


def prune(ctx: Context, scored: nn.Module) -> Pruning:
    """Score ``scored``, the network at the weights the mode scores on, and choose what to remove
    (in ``prune.rounds`` re-scoring rounds at those weights, when the mode re-scores)."""
    cfg = ctx.cfg
    rounds = ctx.rounds if ctx.mode.rescores_in(ctx.rounds) else 1
    pruning = STRUCTURES[cfg.structure].prune(Request(cfg, ctx.remove, scored, scoring(ctx), rounds))
    log.info("%s: %s", cfg.criterion.name, pruning.summary)
    return pruning


@dataclass(frozen=True)
class DenseOrigin:
    """The weights a ticket may start from (``lottery.pruning.modes.Origin``): its dense run's, or a
    fresh initialisation."""

    ctx: Context
    entry: Entry

    def dense_at(self, point) -> nn.Module:
        return dense.model_at(self.ctx, self.entry, point)

    def fresh(self, seed_offset: int) -> nn.Module:
        return self.ctx.build(self.ctx.cfg.seed + seed_offset)


@dataclass
class Ticket:
    model: nn.Module
    start_epoch: int  # first epoch of the dense schedule the ticket trains
    optimizer_state: dict | None = None  # what its optimizer starts from (None: a fresh optimizer)


def make_ticket(ctx: Context, pruning: Pruning, entry: Entry) -> Ticket:
    """The physically smaller network, holding the weights the mode prescribes (and, rewound, its
    share of the dense run's optimizer state there, where the optimizer keeps it)."""
    start = ctx.mode.starting_network(DenseOrigin(ctx, entry), ctx.rewind)
    state = starting_state(ctx, entry, start, pruning)
    return Ticket(pruning.apply(start), ctx.mode.schedule_start(ctx.rewind), state)


def keeps_optimizer(ctx: Context) -> bool:
    """Whether the ticket starts from the dense run's optimizer state at its rewind point theta_i
    (``optim.rewind_state``; from theta_0 there is none: no step was taken)."""
    return bool(ctx.cfg.optim.rewind_state) and bool(ctx.kept_rewind)


def starting_state(ctx: Context, entry: Entry, start: nn.Module, pruning: Pruning) -> dict | None:
    """The dense run's optimizer state at theta_i carried through the ticket's surgery (``start``:
    the dense network there, before it); None where the ticket starts from a fresh optimizer."""
    if not keeps_optimizer(ctx):
        return None
    return carried_state(entry.optimizer(ctx.kept_rewind), start, pruning.apply, Recipe.of(ctx.cfg))


def state_key(ctx: Context) -> dict:
    """What the key of a ticket's training state adds for where its optimizer starts (nothing for
    a fresh one, so the keys of format 1 stay)."""
    return {"optimizer": "rewound"} if keeps_optimizer(ctx) else {}


@dataclass
class TrainedTicket:
    done: Trained
    footprint: carbon.Footprint
    predictions: torch.Tensor  # on the test split
    state: Path  # resumable state (a file, or an IMP trial's folder of rounds), deleted once the run is logged

    def kept(self) -> dict:
        """What a finished IMP round keeps of its training (plain data), restored after a kill."""
        f = self.footprint
        return {"seconds": self.done.seconds, "started": self.done.started, "history": self.done.history,
                "resumed_from": self.done.resumed_from, "footprint": [f.co2_kg, f.energy_kwh, f.power, f.hardware]}

    @classmethod
    def restored(cls, kept: dict, predictions: torch.Tensor, state: Path) -> "TrainedTicket":
        done = Trained(kept["seconds"], kept["started"], history=kept["history"], resumed_from=kept["resumed_from"])
        return cls(done, carbon.Footprint(*kept["footprint"]), predictions, state)


def train_ticket(ctx: Context, ticket: Ticket, state: Path, run: runs.LiveRun) -> TrainedTicket:
    cfg = ctx.cfg
    metered = functools.partial(carbon.tracked, cfg.measure, "ticket", cfg.jobs, ctx.device)  # the epochs alone
    done = train(ticket.model, ctx.data, ctx.job(start=ticket.start_epoch, optimizer_state=ticket.optimizer_state,
                                                 state_path=state, desc="ticket", on_epoch=run.epoch, metered=metered))
    return TrainedTicket(done, done.metered, predict(ticket.model, ctx.data, cfg.train, ctx.device), state)


def one_shot(ctx: Context, entry: Entry, live: runs.LiveRun,
             pruning: Pruning | None) -> tuple[Pruning, Ticket, TrainedTicket, str]:
    """Prune (unless already pruned at theta_0), build the ticket from the mode's weights, train
    it (resumable): the paper's trial."""
    pruning = pruning or prune(ctx, dense.model_at(ctx, entry, "final"))
    ticket = make_ticket(ctx, pruning, entry)
    key = training_key(entry.key, ctx.mode.name, ctx.rewind, ctx.cfg.seed,
                       {"pruned": decisive(pruning.record), **state_key(ctx)})
    return pruning, ticket, train_ticket(ctx, ticket, ctx.store.root / "trials" / f"{key}.state.pt", live), key


def run_name(ctx: Design | Context, label: str) -> str:
    """The ticket run's name: mode, criterion, label, rewind point, model and seed."""
    rewind = f"-r{ctx.rewind}" if ctx.mode.rewinds else ""
    return f"{ctx.mode.name}-{ctx.cfg.criterion.name}-{label}{rewind}-{ctx.model_name}-s{ctx.cfg.seed}"
