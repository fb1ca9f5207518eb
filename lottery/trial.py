"""One trial, top to bottom: skip if finished, dense reference, prune, train the ticket, measure
it beside its dense network, log. The ticket's MLflow run exists from the start (RUNNING, its
history streamed per epoch) and ends FINISHED with its results and weights, or FAILED."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lottery import carbon, costs, dense, measure, tracking
from lottery.checks import validate
from lottery.config import blocks_to_remove, epoch_of
from lottery.criteria import ScoringSet
from lottery.data import Dataset, describe, load_dataset, scoring_set
from lottery.identity import trial_keys
from lottery.metrics import Phase, compare, console, dense_side
from lottery.models import Plan, ResNet, count_filters, count_params, resnet_plan
from lottery.modes import MODES, REINIT_SEED_OFFSET, Mode
from lottery.pruning import STRUCTURES, Pruning
from lottery.robustness import load_shifted
from lottery.stats import mcnemar_p
from lottery.store import DenseStore, Entry, content_key
from lottery.tickets import TICKET_FILE, ticket_file
from lottery.train import (Trained, accuracy, conditions, held_out_accuracy, pick_device, precision,
                           predict, train)

log = logging.getLogger("lottery")


def prune(cfg, mode: Mode, plan: Plan, entry: Entry, data: Dataset, device) -> Pruning:
    """Score the network at the weights the mode scores on and choose what to remove."""
    scored = dense.model_at(plan, entry, 0 if mode.score_on == "init" else "final", device, cfg.train.channels_last)
    scoring = ScoringSet(*scoring_set(data, cfg.criterion.scoring_size, cfg.seed), cfg.criterion.batch_size)
    pruning = STRUCTURES[cfg.structure].prune(cfg, plan, scored, scoring)
    log.info("%s: %s", cfg.criterion.name, pruning.summary)
    return pruning


@dataclass
class Ticket:
    model: ResNet
    start_epoch: int  # first epoch of the dense schedule the ticket trains


def make_ticket(cfg, mode: Mode, plan: Plan, pruning: Pruning, entry: Entry, rewind: int, device) -> Ticket:
    """The physically smaller network, holding the weights the mode prescribes."""
    cl = cfg.train.channels_last
    if mode.start_from == "fresh":
        model = dense.fresh_model(pruning.plan, cfg.seed + REINIT_SEED_OFFSET, device, cl)
    else:
        epoch = {"init": 0, "rewind": rewind, "final": "final"}[mode.start_from]
        model = pruning.apply(dense.model_at(plan, entry, epoch, device, cl))
    return Ticket(model, rewind if mode.resumes_schedule else 0)


@dataclass
class TrainedTicket:
    done: Trained
    footprint: carbon.Footprint
    predictions: torch.Tensor  # on the test split
    state: Path  # resumable state, deleted once the run is logged


def train_ticket(cfg, ticket: Ticket, data: Dataset, device, state: Path, run: tracking.LiveRun) -> TrainedTicket:
    with carbon.tracked(cfg.measure, "ticket", cfg.jobs) as footprint:
        done = train(ticket.model, data, cfg.train, seed=cfg.seed, device=device,
                     start_epoch=ticket.start_epoch, state_path=state, desc="ticket", on_epoch=run.epoch)
    return TrainedTicket(done, footprint, predict(ticket.model, data, cfg.train, device), state)


def run_name(cfg, mode: Mode, label: str) -> str:
    rewind = f"-r{epoch_of(cfg.rewind_epoch, cfg.train.epochs)}" if mode.rewinds else ""
    return f"{mode.name}-{cfg.criterion.name}-{label}{rewind}-resnet{cfg.model.depth}-s{cfg.seed}"


def finished(experiment: str, key: str) -> dict | None:
    """The metrics of a finished run of this very trial, if any (re-running a sweep skips it)."""
    done = [r for r in tracking.find_runs(experiment, role="ticket", config_key=key) if r.info.status == "FINISHED"]
    if not done:
        return None
    log.info("skipped: this config already finished as MLflow run %s (%s)", done[0].info.run_id, done[0].info.run_name)
    return {**done[0].data.metrics, "run_id": done[0].info.run_id, "skipped": True}


def run(cfg, overrides: list[str] = (), tags: dict | None = None) -> dict:
    """Run one trial and return its metrics (also logged to MLflow, with ``overrides`` and ``tags``
    as tags). A trial whose identity and seed already finished in the experiment is skipped, so
    re-running a sweep completes exactly the missing trials; an earlier run of it that a killed
    process left RUNNING is marked KILLED."""
    validate(cfg)
    mode = MODES[cfg.mode.name]
    experiment = tracking.start(cfg.tracking, cfg.paths.root)
    device = pick_device(cfg.device)
    keys = trial_keys(cfg, device)
    if mode.prunes and (done := finished(experiment, keys["config_key"])):
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not mode.prunes:
        return dense_trial(cfg, experiment, device)
    tracking.mark_killed(experiment, role="ticket", config_key=keys["config_key"])
    label = f"p{cfg.density}" + ("" if cfg.structure == "layer" else f"-{cfg.structure}")
    start_tags = {"role": "ticket", "mode": mode.name, "criterion": cfg.criterion.name, "structure": cfg.structure,
                  "profile": cfg.profile_name, "seed": cfg.seed, **keys, "device": str(device),
                  "amp": precision(device, cfg.train.amp), **override_tags(overrides), **(tags or {})}
    with tracking.live(experiment, run_name(cfg, mode, label), start_tags, params(cfg), cfg.tracking.parent) as live:
        return ticket_trial(cfg, mode, experiment, device, live)


def params(cfg) -> dict:
    """The run's params: the flattened config, and the block count and rewind epoch it resolves to."""
    n = len(resnet_plan(cfg.model.depth).removable)  # the count of removable blocks depends on the depth alone
    rewind = epoch_of(cfg.rewind_epoch, cfg.train.epochs) if MODES[cfg.mode.name].rewinds else 0
    return {**tracking.flatten(cfg), "blocks_to_remove": blocks_to_remove(cfg.density, n), "rewind_epoch": rewind}


@dataclass
class Context:
    """What every step of a trial reads: data, the dense plan, the store, the shifted test sets."""
    data: Dataset
    plan: Plan
    store: DenseStore
    shifted: object

    @classmethod
    def load(cls, cfg, device) -> "Context":
        data = load_dataset(cfg.data, device)
        return cls(data, resnet_plan(cfg.model.depth, cfg.model.shortcut.value, data.num_classes),
                   DenseStore(cfg.store.root), load_shifted(cfg.robustness, data, cfg.data.cache, device))


def dense_trial(cfg, experiment: str, device) -> dict:
    """``mode=dense``: the reference alone, trained (or found), measured and logged."""
    c = Context.load(cfg, device)
    entry, run_id = dense.reference(cfg, c.plan, c.data, c.shifted, device, c.store, experiment, None)
    return {"accuracy": entry.metrics["accuracy"], "run_id": run_id}


def ticket_trial(cfg, mode: Mode, experiment: str, device, live: tracking.LiveRun) -> dict:
    c = Context.load(cfg, device)
    tracking.log_dataset(live.run_id, **describe(cfg.data, c.data))
    rewind = epoch_of(cfg.rewind_epoch, cfg.train.epochs) if mode.rewinds else 0
    entry, dense_run = dense.reference(cfg, c.plan, c.data, c.shifted, device, c.store, experiment,
                                       rewind if mode.start_from == "rewind" else None)
    if mode.start_from == "rewind":
        entry = dense.with_rewind_point(cfg, c.plan, c.data, device, c.store, entry, rewind)

    pruning = prune(cfg, mode, c.plan, entry, c.data, device)
    ticket = make_ticket(cfg, mode, c.plan, pruning, entry, rewind, device)
    trial_key = content_key({"dense": entry.key, "mode": mode.name, "pruned": pruning.record,
                             "rewind": rewind, "seed": cfg.seed})
    trained = train_ticket(cfg, ticket, c.data, device, c.store.root / "trials" / f"{trial_key}.state.pt", live)
    metrics, measured_tags = ticket_metrics(cfg, ticket, trained, pruning, entry, c.plan, c.data, c.shifted, device)
    tags = {"dense_key": entry.key, "dense_run_id": dense_run, "trial_key": trial_key, **c.shifted.tags(),
            "dense_power_source": entry.metrics.get("power_source", "unavailable"), **measured_tags}
    name = run_name(cfg, mode, pruning.label)
    artifacts = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True), pruning.artifact: pruning.record}
    live.finish(metrics, artifacts, tags, name, {TICKET_FILE: ticket_file(ticket.model, pruning.plan)})
    trained.state.unlink(missing_ok=True)
    log.info("%s: ticket %.2f%% vs dense %.2f%% (%+.2f pp, %s; McNemar p=%.3g) | filters %d -> %d | "
             "params %d -> %d | %s | MLflow run %s", name, metrics["accuracy"], metrics["dense_accuracy"],
             metrics["delta_pp"], "wins" if metrics["winning"] else "loses", metrics["mcnemar_p"],
             metrics["dense_filters"], metrics["filters"], metrics["dense_params"], metrics["params"],
             console(metrics), live.run_id)
    return {**metrics, "run_id": live.run_id, "name": name}


def accuracy_metrics(cfg, ticket: Ticket, trained: TrainedTicket, entry: Entry, data: Dataset, device) -> dict:
    """Test accuracy against the dense network's on the same images (Eq. 1, McNemar), and the
    held-out validation accuracy when there is a validation split."""
    dm = entry.metrics
    acc = accuracy(trained.predictions, data.test)
    out = {"accuracy": acc, "winning": float(acc + cfg.xi >= dm["accuracy"]),
           "mcnemar_p": mcnemar_p(trained.predictions, torch.tensor(entry.meta["predictions"]), data.test.y.cpu()),
           "train_images": len(data.train), "test_images": len(data.test)}
    return {**out, **held_out_accuracy(ticket.model, data, cfg.train, device)}


def ticket_metrics(cfg, ticket: Ticket, trained: TrainedTicket, pruning: Pruning, entry: Entry, plan: Plan,
                   data: Dataset, shifted, device) -> tuple[dict, dict]:
    """Every number logged for a ticket, each beside its dense counterpart (SPEC §7), and the
    tags that say where they came from or why a comparison is absent."""
    measured = {**costs.network_costs(ticket.model, cfg, data, shifted, device),
                **trained.footprint.metrics(trained.done.resumed_from)}
    side = dense_side(entry.metrics, f"@{costs.robustness_key(cfg)}")
    epochs = cfg.train.epochs - ticket.start_epoch
    metrics = {
        **accuracy_metrics(cfg, ticket, trained, entry, data, device), **pruning.metrics,
        "params": count_params(ticket.model), "filters": count_filters(ticket.model),
        "train_seconds": trained.done.seconds, "ticket_epochs": epochs, **side,
        **{k: v for k, v in measured.items() if not isinstance(v, str)},
    }
    if cfg.measure.enabled:
        m = cfg.measure
        dense_model = dense.model_at(plan, entry, "final", device, cfg.train.channels_last)
        metrics["throughput_img_s"] = measure.throughput(ticket.model, cfg.train, device, m.throughput_steps,
                                                         m.warmup_steps)
        metrics["dense_throughput_img_s"] = measure.throughput(dense_model, cfg.train, device, m.throughput_steps,
                                                               m.warmup_steps)
        metrics["cka"] = costs.cka_to_dense(ticket.model, dense_model, data, cfg)
    phase = Phase(trained.done.seconds, epochs, metrics.get("co2_kg"), metrics.get("energy_kwh"),
                  conditions(device, cfg.train, cfg.jobs), trained.done.resumed_from is not None)
    compared, tags = compare(metrics, phase, Phase.of(entry.metrics))
    metrics.update(compared)
    return metrics, {**tags, **{k: v for k, v in measured.items() if isinstance(v, str)}}


def override_tags(overrides) -> dict[str, str]:
    """``override.<key>`` tags from command-line overrides such as ``density=2``."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {f"override.{k.lstrip('+~')}": v for k, v in pairs}
