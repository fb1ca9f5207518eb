"""One trial, top to bottom: skip if finished, dense reference, prune, train the ticket, measure
it beside its dense network, log. The ticket's MLflow run exists from the start (RUNNING, its
history streamed per epoch) and ends FINISHED with its results and weights, or FAILED."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from lottery import networks
from lottery.config import TrialConfig
from lottery.errors import LotteryError
from lottery.experiment import dense, estimate, fast_path, identity
from lottery.experiment.context import Context
from lottery.experiment.design import derive
from lottery.files import content_key, save_atomic
from lottery.measure import carbon, costs
from lottery.measure.metrics import Phase, compare, console, dense_side
from lottery.measure.similarity import cka_to_dense
from lottery.measure.stats import ALPHA
from lottery.measure.trial_costs import network_costs, robustness_key
from lottery.pruning.criteria import ScoringSet
from lottery.pruning.modes import REINIT_SEED_OFFSET
from lottery.pruning.structures import STRUCTURES, Pruning, Request, blocks_per_round, decisive, in_rounds, layers
from lottery.tracking import outbox, runs
from lottery.tracking.store import Entry
from lottery.tracking.tickets import TICKET_FILE, ticket_file
from lottery.training.data import describe, scoring_set, train_images
from lottery.training.devices import conditions, configure, determinism, name_of, not_deterministic
from lottery.training.trainer import (
    Trained,
    cpu_state,
    discard,
    held_out_accuracy,
    load_checkpoint,
    predict,
    train,
)

log = logging.getLogger("lottery")


def prune(ctx: Context, scored: nn.Module) -> Pruning:
    """Score ``scored``, the network at the weights the mode scores on, and choose what to remove
    (in ``prune.rounds`` re-scoring rounds at those weights, when the mode re-scores)."""
    cfg = ctx.cfg
    rounds = ctx.rounds if ctx.mode.iterates(ctx.rounds) == "rescore" else 1
    pruning = STRUCTURES[cfg.structure].prune(Request(cfg, ctx.remove, scored, scoring(ctx), rounds))
    log.info("%s: %s", cfg.criterion.name, pruning.summary)
    return pruning


def scoring(ctx: Context) -> ScoringSet:
    cfg = ctx.cfg
    return ScoringSet(*scoring_set(ctx.data, cfg.criterion.scoring_size, cfg.seed), cfg.criterion.batch_size,
                      ctx.data.task)


@dataclass
class Ticket:
    model: nn.Module
    start_epoch: int  # first epoch of the dense schedule the ticket trains


def make_ticket(ctx: Context, pruning: Pruning, entry: Entry) -> Ticket:
    """The physically smaller network, holding the weights the mode prescribes."""
    mode = ctx.mode
    if mode.start_from == "fresh":
        model = pruning.apply(ctx.build(ctx.cfg.seed + REINIT_SEED_OFFSET))
    else:
        weights = {"init": 0, "rewind": ctx.rewind, "final": "final"}[mode.start_from]
        model = pruning.apply(dense.model_at(ctx, entry, weights))
    return Ticket(model, ctx.rewind if mode.resumes_schedule else 0)


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
    with carbon.tracked(cfg.measure, "ticket", cfg.jobs, ctx.device) as footprint:
        done = train(ticket.model, ctx.data, ctx.job(start=ticket.start_epoch, state_path=state, desc="ticket",
                                                     on_epoch=run.epoch))
    return TrainedTicket(done, footprint, predict(ticket.model, ctx.data, cfg.train, ctx.device), state)


def one_shot(ctx: Context, entry: Entry, live: runs.LiveRun,
             pruning: Pruning | None) -> tuple[Pruning, Ticket, TrainedTicket, str]:
    """Prune (unless already pruned at theta_0), build the ticket from the mode's weights, train
    it (resumable): the paper's trial."""
    pruning = pruning or prune(ctx, dense.model_at(ctx, entry, "final"))
    ticket = make_ticket(ctx, pruning, entry)
    key = content_key({"dense": entry.key, "mode": ctx.mode.name, "pruned": decisive(pruning.record),
                       "rewind": ctx.rewind, "seed": ctx.cfg.seed})
    return pruning, ticket, train_ticket(ctx, ticket, ctx.store.root / "trials" / f"{key}.state.pt", live), key


def imp(ctx: Context, entry: Entry, live: runs.LiveRun) -> tuple[Pruning, Ticket, TrainedTicket, str]:
    """Layer-wise iterative LTH (Frankle & Carbin 2019, blocks instead of weights): score the
    trained network, remove density / R of its blocks, rewind the kept blocks to theta_i, train
    n - i epochs; R rounds, each scoring the previous round's trained ticket. Each round's ticket
    is a child run of the trial; its choice and trained weights are kept in the store, so a killed
    trial resumes in the round it was in (and there after its last epoch)."""
    cfg = ctx.cfg
    key = content_key({"dense": entry.key, "mode": ctx.mode.name, "rewind": ctx.rewind, "seed": cfg.seed,
                       "remove": ctx.remove, "rounds": ctx.rounds,
                       "criterion": identity.section(cfg, "criterion")})
    folder = ctx.store.root / "trials" / f"{key}.rounds"
    scored, chosen, data = dense.model_at(ctx, entry, "final"), [], scoring(ctx)
    name = run_name(ctx, f"p{ctx.remove}-{ctx.rounds}rounds")
    for r, count in enumerate(blocks_per_round(ctx.remove, ctx.rounds), 1):
        saved = folder / f"round-{r}.pt"
        done = load_checkpoint(saved, "IMP round") if saved.exists() else None
        chosen.append(done["chosen"] if done else layers(Request(cfg, count, scored, data)).record["rounds"][0])
        rewound = dense.model_at(ctx, entry, ctx.rewind)
        pruning = in_rounds(rewound, chosen)
        ticket = Ticket(pruning.apply(rewound), ctx.rewind)
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
                                         "train_seconds": trained.done.seconds}))
        log.info("IMP round %d of %d: %s", r, ctx.rounds, pruning.summary.split("; ")[-1])
        scored = ticket.model
    live.history(trained.done.history)  # the trial's own curves: its last round's
    return pruning, ticket, TrainedTicket(trained.done, trained.footprint, trained.predictions, folder), key


def run_name(ctx: Context, label: str) -> str:
    rewind = f"-r{ctx.rewind}" if ctx.mode.rewinds else ""
    return f"{ctx.mode.name}-{ctx.cfg.criterion.name}-{label}{rewind}-{ctx.model_name}-s{ctx.cfg.seed}"


def finished(ctx: Context) -> dict | None:
    """The metrics of a finished run of this very trial, if any (re-running a sweep skips it)."""
    done = [r for r in runs.find_runs(ctx.experiment, role="ticket", config_key=ctx.keys["config_key"])
            if r.info.status == "FINISHED"]
    if not done:
        return None
    log.info("skipped: this config already finished as MLflow run %s (%s)", done[0].info.run_id, done[0].info.run_name)
    return {**done[0].data.metrics, "run_id": done[0].info.run_id, "skipped": True}


def run(cfg: TrialConfig, overrides: list[str] = (), tags: dict | None = None, job: int = 0) -> dict:
    """Run one trial and return its metrics (also logged to MLflow, with ``overrides`` and ``tags``
    as tags). A trial whose identity and seed already finished in the experiment is skipped, so
    re-running a sweep completes exactly the missing trials; an earlier run of it that a killed
    process left RUNNING is marked KILLED. ``job``: its number in a multirun (its GPU)."""
    ctx = Context.open(derive(cfg, job))
    if ctx.mode.prunes:
        synced = outbox.sync_all(ctx.outbox, ctx.keys["config_key"])  # results MLflow missed last time
        if synced:
            return synced[-1]
        if done := finished(ctx):
            return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    configure(ctx.device, cfg.train)
    log.info("device: %s", name_of(ctx.device))
    warn_if_slow(ctx)
    settled = fast_path.settle(cfg, ctx.device)  # layout and compile, before any network is built
    settled.apply(cfg.train)
    ctx.fast_path = settled.tag
    try:
        return _run(ctx, overrides, tags)
    except RuntimeError as e:
        if (line := not_deterministic(e, ctx.device)) is not None:
            raise line from None
        raise


def _run(ctx: Context, overrides: list[str], tags: dict | None) -> dict:
    cfg = ctx.cfg
    if not ctx.mode.prunes:
        return dense_trial(ctx)
    runs.mark_killed(ctx.experiment, role="ticket", config_key=ctx.keys["config_key"])
    label = f"p{cfg.density}" + ("" if cfg.structure == "layer" else f"-{cfg.structure}")
    start_tags = {"role": "ticket", "mode": ctx.mode.name, "criterion": cfg.criterion.name, "structure": cfg.structure,
                  "profile": cfg.profile_name, "seed": cfg.seed, "model": ctx.model_name, **ctx.keys,
                  "device": str(ctx.device), "amp": ctx.precision, "deterministic": determinism(ctx.device),
                  "fast_path": ctx.fast_path,
                  **override_tags(overrides),
                  **(tags or {})}
    with runs.live(ctx.experiment, run_name(ctx, label), start_tags, params(ctx), cfg.tracking.parent) as live:
        return ticket_trial(ctx, live)


SLOW_EPOCHS = 50  # a profile longer than this on a CPU is worth a warning


def warn_if_slow(ctx: Context) -> None:
    """``device=auto`` that found no GPU, for a long profile: say so, and what one network costs here."""
    cfg = ctx.cfg
    if cfg.device != "auto" or ctx.device.type != "cpu" or cfg.train.epochs <= SLOW_EPOCHS:
        return
    work = cfg.train.epochs * train_images(cfg.data) * estimate.network_flops(cfg, 0)
    hours = work / estimate.timed_speed(cfg).flop_s / 3600
    log.warning("device=auto found no GPU: training on the CPU, where one dense network of this profile (%d epochs) "
                "takes about %.1f h; set device=cpu to silence this, or run on a GPU", cfg.train.epochs, hours)


def params(ctx: Context) -> dict:
    """The run's params: the flattened config, and the block count and rewind epoch it resolves to."""
    return {**runs.flatten(ctx.cfg), "blocks_to_remove": ctx.remove, "rewind_epoch": ctx.rewind}


def dense_trial(ctx: Context) -> dict:
    """``mode=dense``: the reference alone, trained (or found), measured and logged."""
    entry, run_id = dense.reference(ctx.load())
    return {"accuracy": entry.metrics["accuracy"], "run_id": run_id}


def ticket_trial(ctx: Context, live: runs.LiveRun) -> dict:
    cfg = ctx.load().cfg
    runs.log_dataset(live.run_id, **describe(cfg.data, ctx.data))
    # theta_0 is the seed's initialisation, the dense network's own: a mode that scores it prunes
    # before any training, so a criterion that cannot choose stops the trial first.
    early = prune(ctx, ctx.build(cfg.seed)) if ctx.mode.score_on == "init" else None
    entry, dense_run = dense.reference(ctx)
    if ctx.mode.iterates(ctx.rounds) == "retrain":
        pruning, ticket, trained, trial_key = imp(ctx, entry, live)
    else:
        pruning, ticket, trained, trial_key = one_shot(ctx, entry, live, early)
    metrics, measured_tags = ticket_metrics(ctx, ticket, trained, pruning, entry)
    tags = {"dense_key": entry.key, "dense_run_id": dense_run, "trial_key": trial_key, **ctx.shifted.tags(),
            "paired_test": ctx.data.task.test,
            "dense_power_source": entry.tags.get("power_source", "unavailable"), **pruning.tags,
            **dense.learning_tags(ctx, entry), **measured_tags}
    name = run_name(ctx, pruning.label)
    artifacts = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True), pruning.artifact: pruning.record}
    results = runs.Results(metrics, tags, artifacts, {TICKET_FILE: ticket_file(ticket.model)}, name,
                               network=ticket.model if cfg.tracking.log_model else None)
    try:
        live.finish(results)
    except runs.Untaken as why:
        kept = outbox.keep(ctx.outbox, live, results)
        raise LotteryError(f"MLflow did not take the results of run {name} ({why}); they are kept in {kept}: the "
                           "next start of this trial, or `python -m lottery sync`, logs them") from None
    if trained.state.is_dir():
        shutil.rmtree(trained.state)
    else:
        discard(trained.state)
    log.info("%s: ticket %.2f%% vs dense %.2f%% (%s) | filters %d -> %d | params %d -> %d | %s | MLflow run %s",
             name, metrics["accuracy"], metrics["dense_accuracy"], verdict(ctx, metrics, tags), metrics["dense_filters"],
             metrics["filters"], metrics["dense_params"], metrics["params"], console(metrics), live.run_id)
    return {**metrics, "run_id": live.run_id, "name": name}


def verdict(ctx: Context, metrics: dict, tags: dict) -> str:
    """Eq. 1's word and whether the difference exceeds the noise (the task's paired test: McNemar's
    exact test on images, a paired t-test on sequence accuracies; docs/design.md §8.2), e.g. ``-2.78 pp,
    loses, significant: McNemar p=0.0213``; a dense network that did not learn says so instead of
    a finding."""
    word = "wins" if metrics["winning"] else "loses"
    noise = "significant" if metrics["p_value"] < ALPHA else "within noise"
    text = f"{metrics['delta_pp']:+.2f} pp, {word}, {noise}: {ctx.data.task.test} p={metrics['p_value']:.3g}"
    return text + ("; the dense network is at chance: no finding" if tags.get("dense_at_chance") == "true" else "")


def accuracy_metrics(ctx: Context, ticket: Ticket, trained: TrainedTicket, entry: Entry) -> dict:
    """Test accuracy against the dense network's on the same examples (Eq. 1, the task's paired
    test), the task's other test numbers (a language model's loss and perplexity), and the
    held-out validation accuracy when there is a validation split."""
    data, dm = ctx.data, entry.metrics
    acc = data.accuracy(trained.predictions)
    dense_predictions = torch.from_numpy(np.asarray(entry.meta["predictions"]))  # as stored: int64 or float64
    out = {"accuracy": acc, "winning": float(acc + ctx.cfg.xi >= dm["accuracy"]),
           **data.task.summary(trained.predictions, data.test.y),
           **data.task.paired(trained.predictions, dense_predictions, data.test.y),
           "train_images": len(data.train), "test_images": len(data.test)}
    return {**out, **held_out_accuracy(ticket.model, data, ctx.cfg.train, ctx.device)}


def ticket_metrics(ctx: Context, ticket: Ticket, trained: TrainedTicket, pruning: Pruning,
                   entry: Entry) -> tuple[dict, dict]:
    """Every number logged for a ticket, each beside its dense counterpart (docs/design.md §7), and
    the tags that say where they came from or why a comparison is absent."""
    cfg = ctx.cfg
    dense_model = dense.model_at(ctx, entry, "final") if cfg.measure.enabled else None
    measured, tags = network_costs(ctx, ticket.model, beside=dense_model)  # the dense side's device costs beside it
    epochs = cfg.train.epochs - ticket.start_epoch
    metrics = {
        **accuracy_metrics(ctx, ticket, trained, entry), **pruning.metrics,
        "params": networks.count_params(ticket.model), "filters": networks.count_filters(ticket.model),
        "train_seconds": trained.done.seconds, "ticket_epochs": epochs,
        **dense_side(entry.metrics, f"@{robustness_key(cfg)}"), **measured, **trained.footprint.metrics(),
    }
    if dense_model is not None:
        metrics["cka"] = cka_to_dense(ticket.model, dense_model, ctx.data, cfg)
    phase = Phase(trained.done.seconds, epochs, metrics.get("co2_kg"), metrics.get("energy_kwh"),
                  conditions(ctx.device, cfg.train, cfg.jobs), trained.done.resumed_from is not None)
    compared, absent = compare(metrics, phase, Phase.of(entry))
    metrics.update(compared)
    unreliable = {k: v for k, v in absent.items() if k.endswith("_unreliable")}
    if unreliable:
        log.warning("left out as unreliable (the machine was busy?): %s", "; ".join(f"{k[:-11]}: {v}"
                                                                                     for k, v in unreliable.items()))
    return metrics, {**absent, **tags, "compiled": trained.done.compiled,
                     **trained.footprint.tags(trained.done.resumed_from)}


def override_tags(overrides) -> dict[str, str]:
    """``override.<key>`` tags from command-line overrides such as ``density=2``."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {f"override.{k.lstrip('+~')}": v for k, v in pairs}
