"""Layer-wise iterative LTH (Frankle & Carbin 2019, blocks instead of weights): the ticket of a mode
that retrains between rounds, built round by round, each round resumable."""

from __future__ import annotations

import logging

from lottery import networks
from lottery.experiment import dense, identity
from lottery.experiment.context import Context
from lottery.experiment.ticket import (DenseOrigin, Ticket, TrainedTicket, run_name, scoring, starting_state, state_key,
                                      train_ticket)
from lottery.files import save_atomic
from lottery.measure import costs
from lottery.pruning.structures import Pruning, Request
from lottery.pruning.structures.layer import blocks_per_round, in_rounds, layers
from lottery.tracking import runs
from lottery.tracking.store import Entry
from lottery.training.checkpoints import cpu_state, discard, load_checkpoint
from lottery.training.trainer import predict

log = logging.getLogger("lottery")


def imp(ctx: Context, entry: Entry, live: runs.LiveRun) -> tuple[Pruning, Ticket, TrainedTicket, str]:
    """Score the trained network, remove density / R of its blocks, rewind the kept blocks to the
    mode's starting weights, train n - i epochs; R rounds, each scoring the previous round's
    trained ticket. Each round's ticket is a child run of the trial; its choice and trained weights
    are kept in the store, so a killed trial resumes in the round it was in (and there after its
    last epoch)."""
    cfg = ctx.cfg
    key = identity.training_key(entry.key, ctx.mode.name, ctx.rewind, cfg.seed,
                                {"remove": ctx.remove, "rounds": ctx.rounds,
                                 "criterion": identity.section(cfg, "criterion"), **state_key(ctx)})
    folder = ctx.store.root / "trials" / f"{key}.rounds"
    scored, chosen, data = dense.model_at(ctx, entry, "final"), [], scoring(ctx)
    name = run_name(ctx, f"p{ctx.remove}-{ctx.rounds}rounds")
    origin = DenseOrigin(ctx, entry)
    for r, count in enumerate(blocks_per_round(ctx.remove, ctx.rounds), 1):
        saved = folder / f"round-{r}.pt"
        done = load_checkpoint(saved, "IMP round") if saved.exists() else None
        chosen.append(done["chosen"] if done else layers(Request(cfg, count, scored, data)).record["rounds"][0])
        rewound = ctx.mode.starting_network(origin, ctx.rewind)
        pruning = in_rounds(rewound, chosen)
        state = starting_state(ctx, entry, rewound, pruning) if done is None else None
        ticket = Ticket(pruning.apply(rewound), ctx.mode.schedule_start(ctx.rewind), state)
        tags = {"role": "round", "round": r, "config_key": ctx.keys["config_key"], "restored": done is not None}
        with runs.live(ctx.experiment, f"{name}-round{r}", tags, {"round": r}, live.run_id) as run:
            if done is None:
                trained = train_ticket(ctx, ticket, folder / f"round-{r}.state.pt", run)
                save_atomic({"chosen": chosen[-1], "weights": cpu_state(ticket.model), **trained.kept()}, saved)
                discard(folder / f"round-{r}.state.pt")
            else:
                ticket.model.load_state_dict(done["weights"])
                trained = TrainedTicket.restored(done, predict(ticket.model, ctx.data, cfg.train, ctx.device), saved)
                run.history(done["history"])
            run.finish(runs.Results({"round": r, "accuracy": ctx.data.accuracy(trained.predictions),
                                     "blocks_removed": len(pruning.record["removed"]),
                                     "flops": costs.flops(ticket.model),
                                     "params": networks.count_params(ticket.model),
                                     **trained.done.timings()}))
        log.info("IMP round %d of %d: %s", r, ctx.rounds, pruning.summary.split("; ")[-1])
        scored = ticket.model
    live.history(trained.done.history)  # the trial's own curves: its last round's
    return pruning, ticket, TrainedTicket(trained.done, trained.footprint, trained.predictions, folder), key
