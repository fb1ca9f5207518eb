"""One trial, top to bottom: skip if finished, dense reference, prune, train the ticket, measure
it beside its dense network, log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lottery import carbon, costs, measure, tracking
from lottery.checks import validate
from lottery.config import blocks_to_remove, epoch_of, rewind_epochs
from lottery.criteria import ScoringSet
from lottery.data import Dataset, fingerprint, load_dataset, scoring_set
from lottery.identity import cell_key, config_key
from lottery.metrics import Phase, compare, console, dense_side
from lottery.models import Plan, ResNet, build, count_filters, count_params, resnet_plan
from lottery.modes import MODES, REINIT_SEED_OFFSET, Mode
from lottery.pruning import STRUCTURES, Pruning
from lottery.robustness import load_shifted
from lottery.stats import mcnemar_p
from lottery.store import DenseResult, DenseStore, Entry, content_key
from lottery.train import (Trained, accuracy, conditions, cpu_state, evaluate, pick_device, precision, predict,
                           prepare, train)

log = logging.getLogger("lottery")

RECIPE_KEYS = ("epochs", "milestones", "gamma", "lr", "momentum", "nesterov", "weight_decay",
               "batch_size", "augment")


def dense_spec(cfg, data: Dataset, device) -> dict:
    """What defines a dense run (not criterion, density or mode): its store key's content.
    The precision is the one training resolves to (``amp=auto`` is bf16 on one machine, fp32 on
    another), so a stored fp32 network never stands in for a bf16 one."""
    train = OmegaConf.to_container(cfg.train, enum_to_str=True)
    return {"model": {"depth": cfg.model.depth, "shortcut": cfg.model.shortcut.value},
            "data": data.fingerprint, "seed": cfg.seed,
            "train": {**{k: train[k] for k in RECIPE_KEYS}, "amp": precision(device, cfg.train.amp)}}


def fresh_model(plan: Plan, seed: int, device, channels_last: bool) -> ResNet:
    torch.manual_seed(seed)
    return prepare(build(plan), device, channels_last)


def held_out_accuracy(model: ResNet, data: Dataset, t, device) -> dict:
    """Accuracy on the validation split held out of the training images, when there is one."""
    return {} if data.val is None else {"val_accuracy": evaluate(model, data, t, device, data.val)}


def train_dense(cfg, plan: Plan, data: Dataset, device, partial: Path, keep: set[int]) -> DenseResult:
    """Train the dense reference F, keeping theta_e for every epoch in ``keep`` (resumable)."""
    model = fresh_model(plan, cfg.seed, device, cfg.train.channels_last)
    with carbon.tracked(cfg.measure, "dense", cfg.jobs) as footprint:
        done = train(model, data, cfg.train, seed=cfg.seed, device=device, keep=keep,
                     state_path=partial / "state.pt", desc="dense")
    predictions = predict(model, data, cfg.train, device)
    metrics = {"accuracy": accuracy(predictions, data.test), "train_seconds": done.seconds,
               "epochs": cfg.train.epochs, "params": count_params(model), "filters": count_filters(model),
               "train_conditions": conditions(device, cfg.train, cfg.jobs),
               **footprint_metrics(footprint, done.resumed_from), **held_out_accuracy(model, data, cfg.train, device)}
    return DenseResult(done.checkpoints, cpu_state(model), metrics, {"predictions": predictions.tolist()})


def footprint_metrics(fp: carbon.Footprint, resumed_from: int | None) -> dict:
    return {"co2_kg": fp.co2_kg, "energy_kwh": fp.energy_kwh, "power_source": fp.power,
            "power_hardware": fp.hardware, "co2_covers": "all" if resumed_from is None
            else f"epochs after {resumed_from} (resumed)"}


def measured_dense(cfg, plan: Plan, entry: Entry, data: Dataset, shifted, device, store: DenseStore) -> Entry:
    """Measure the dense network's costs, robustness and test predictions once per entry (and
    robustness set), on the same images and by the same functions as its tickets."""
    suffix = f"@{costs.robustness_key(cfg)}"
    wanted = {"flops"} if cfg.measure.enabled else set()
    if shifted.cifar10c:
        wanted.add(f"cifar10c_accuracy{suffix}")
    if shifted.cifar102 is not None:
        wanted.add(f"cifar102_accuracy{suffix}")
    if data.val is not None:
        wanted.add("val_accuracy")
    if wanted <= set(entry.metrics) and "predictions" in entry.meta:
        return entry
    model = model_at(plan, entry, "final", device, cfg.train.channels_last)
    metrics = {**costs.network_costs(model, cfg, data, shifted, device, suffix),
               **held_out_accuracy(model, data, cfg.train, device)}
    return store.update_metrics(entry, metrics, predictions=predict(model, data, cfg.train, device).tolist())


def dense_reference(cfg, plan: Plan, data: Dataset, device, store: DenseStore, rewind: int | None) -> Entry:
    """The stored dense run, trained first if missing, keeping the configured rewind points and
    the one this trial rewinds to."""
    spec = dense_spec(cfg, data, device)
    keep = set(rewind_epochs(cfg.train)) | ({rewind} if rewind is not None else set())
    entry, trained = store.get_or_train(content_key(spec), spec,
                                        lambda partial: train_dense(cfg, plan, data, device, partial, keep),
                                        retrain=cfg.store.retrain)
    log.info("dense %s %s: accuracy %.2f%%", entry.key, "trained" if trained else "reused from the store",
             entry.metrics["accuracy"])
    return entry


def log_dense(cfg, entry: Entry, experiment: str, store: DenseStore) -> str:
    """The dense reference's MLflow run, created the first time any trial needs it (under the
    entry's lock, so concurrent trials log it once)."""
    with store.lock(entry.key):
        runs = tracking.find_runs(experiment, role="dense", dense_key=entry.key)
        return runs[0].info.run_id if runs else _log_dense(cfg, entry, experiment)


def _log_dense(cfg, entry: Entry, experiment: str) -> str:
    suffix = f"@{costs.robustness_key(cfg)}"
    numbers = {k.replace(suffix, ""): v for k, v in entry.metrics.items()
               if isinstance(v, (int, float)) and ("@" not in k or k.endswith(suffix))}
    words = {k: v for k, v in entry.metrics.items() if isinstance(v, str)}
    name = f"dense-resnet{cfg.model.depth}-s{cfg.seed}"
    params = {k: v for k, v in tracking.flatten(cfg).items() if k.split(".")[0] in ("model", "data", "train", "seed")}
    meta = {k: v for k, v in entry.meta.items() if k != "predictions"}
    return tracking.log_run(experiment, name, {"role": "dense", "dense_key": entry.key,
                                               "profile": cfg.profile_name, "amp": entry.meta["spec"]["train"]["amp"],
                                               **words},
                            params, numbers, {"dense.json": meta})


def model_at(plan: Plan, entry: Entry, weights, device, channels_last: bool) -> ResNet:
    model = prepare(build(plan), device, channels_last)
    model.load_state_dict(entry.weights(weights))
    return model


def prune(cfg, mode: Mode, plan: Plan, dense: Entry, data: Dataset, device) -> Pruning:
    """Score the network at the weights the mode scores on and choose what to remove."""
    scored = model_at(plan, dense, 0 if mode.score_on == "init" else "final", device, cfg.train.channels_last)
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
        model = fresh_model(pruning.plan, cfg.seed + REINIT_SEED_OFFSET, device, cl)
    else:
        epoch = {"init": 0, "rewind": rewind, "final": "final"}[mode.start_from]
        model = pruning.apply(model_at(plan, entry, epoch, device, cl))
    return Ticket(model, rewind if mode.resumes_schedule else 0)


@dataclass
class TrainedTicket:
    done: Trained
    footprint: carbon.Footprint
    predictions: torch.Tensor  # on the test split
    state: Path  # resumable state, deleted once the run is logged


def train_ticket(cfg, ticket: Ticket, data: Dataset, device, state: Path) -> TrainedTicket:
    with carbon.tracked(cfg.measure, "ticket", cfg.jobs) as footprint:
        done = train(ticket.model, data, cfg.train, seed=cfg.seed, device=device,
                     start_epoch=ticket.start_epoch, state_path=state, desc="ticket")
    return TrainedTicket(done, footprint, predict(ticket.model, data, cfg.train, device), state)


def run_name(cfg, mode: Mode, pruning: Pruning) -> str:
    rewind = f"-r{epoch_of(cfg.rewind_epoch, cfg.train.epochs)}" if mode.rewinds else ""
    return f"{mode.name}-{cfg.criterion.name}-{pruning.label}{rewind}-resnet{cfg.model.depth}-s{cfg.seed}"


def finished(experiment: str, key: str) -> dict | None:
    """The metrics of a finished run of this very trial, if any (re-running a sweep skips it)."""
    done = [r for r in tracking.find_runs(experiment, role="ticket", config_key=key) if r.info.status == "FINISHED"]
    if not done:
        return None
    log.info("skipped: this config already finished as MLflow run %s (%s)", done[0].info.run_id, done[0].info.run_name)
    return {**done[0].data.metrics, "run_id": done[0].info.run_id, "skipped": True}


def identity_keys(cfg, device) -> dict:
    """The trial's cell and config keys (``lottery.identity``), tagged on its run."""
    data_id = fingerprint(cfg.data)
    return {"cell_key": cell_key(cfg, data_id), "config_key": config_key(cfg, data_id, precision(device, cfg.train.amp))}


def run(cfg, overrides: list[str] = (), tags: dict | None = None) -> dict:
    """Run one trial and return its metrics (also logged to MLflow, with ``overrides`` and ``tags``
    as tags). A trial whose identity and seed already finished in the experiment is skipped, so
    re-running a sweep completes exactly the missing trials."""
    validate(cfg)
    mode = MODES[cfg.mode.name]
    experiment = tracking.start(cfg.tracking, cfg.paths.root)
    device = pick_device(cfg.device)
    keys = identity_keys(cfg, device)
    if mode.prunes and (done := finished(experiment, keys["config_key"])):
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_dataset(cfg.data, device)
    plan = resnet_plan(cfg.model.depth, cfg.model.shortcut.value, data.num_classes)
    store = DenseStore(cfg.store.root)
    shifted = load_shifted(cfg.robustness, data, cfg.data.cache, device)

    rewind = epoch_of(cfg.rewind_epoch, cfg.train.epochs) if mode.rewinds else None
    dense = measured_dense(cfg, plan, dense_reference(cfg, plan, data, device, store, rewind), data, shifted,
                           device, store)
    dense_run = log_dense(cfg, dense, experiment, store)
    if not mode.prunes:
        return {"accuracy": dense.metrics["accuracy"], "run_id": dense_run}
    if rewind is not None:
        dense.weights(rewind)  # fail now, not after scoring, if theta_i was never kept

    pruning = prune(cfg, mode, plan, dense, data, device)
    ticket = make_ticket(cfg, mode, plan, pruning, dense, rewind or 0, device)
    trial_key = content_key({"dense": dense.key, "mode": mode.name, "pruned": pruning.record,
                             "rewind": rewind or 0, "seed": cfg.seed})
    trained = train_ticket(cfg, ticket, data, device, store.root / "trials" / f"{trial_key}.state.pt")
    metrics, measured_tags = ticket_metrics(cfg, ticket, trained, pruning, dense, plan, data, shifted, device)
    tags = {"dense_key": dense.key, "dense_run_id": dense_run, "trial_key": trial_key, **keys, "device": str(device),
            "amp": precision(device, cfg.train.amp), **override_tags(overrides), **(tags or {}), **shifted.tags(),
            "dense_power_source": dense.metrics.get("power_source", "unavailable"), **measured_tags}
    out = log_ticket(cfg, experiment, run_name(cfg, mode, pruning), tags, metrics, pruning, plan, rewind or 0)
    trained.state.unlink(missing_ok=True)
    return out


def log_ticket(cfg, experiment: str, name: str, tags: dict, metrics: dict, pruning: Pruning, plan: Plan,
               rewind: int) -> dict:
    """The ticket's MLflow run, written in one go, and its line on the console."""
    tags = {"role": "ticket", "mode": cfg.mode.name, "criterion": cfg.criterion.name, "structure": cfg.structure,
            "profile": cfg.profile_name, "seed": cfg.seed, **tags}
    params = {**tracking.flatten(cfg), "blocks_to_remove": blocks_to_remove(cfg.density, len(plan.removable)),
              "rewind_epoch": rewind}
    run_id = tracking.log_run(experiment, name, tags, params, metrics,
                              {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True), pruning.artifact: pruning.record})
    log.info("%s: ticket %.2f%% vs dense %.2f%% (%+.2f pp, %s; McNemar p=%.3g) | filters %d -> %d | "
             "params %d -> %d | %s | MLflow run %s", name, metrics["accuracy"], metrics["dense_accuracy"],
             metrics["delta_pp"], "wins" if metrics["winning"] else "loses", metrics["mcnemar_p"],
             metrics["dense_filters"], metrics["filters"], metrics["dense_params"], metrics["params"],
             console(metrics), run_id)
    return {**metrics, "run_id": run_id, "name": name}


def accuracy_metrics(cfg, ticket: Ticket, trained: TrainedTicket, dense: Entry, data: Dataset, device) -> dict:
    """Test accuracy against the dense network's on the same images (Eq. 1, McNemar), and the
    held-out validation accuracy when there is a validation split."""
    dm = dense.metrics
    acc = accuracy(trained.predictions, data.test)
    out = {"accuracy": acc, "winning": float(acc + cfg.xi >= dm["accuracy"]),
           "mcnemar_p": mcnemar_p(trained.predictions, torch.tensor(dense.meta["predictions"]), data.test.y.cpu()),
           "train_images": len(data.train), "test_images": len(data.test)}
    return {**out, **held_out_accuracy(ticket.model, data, cfg.train, device)}


def ticket_metrics(cfg, ticket: Ticket, trained: TrainedTicket, pruning: Pruning, dense: Entry, plan: Plan,
                   data: Dataset, shifted, device) -> tuple[dict, dict]:
    """Every number logged for a ticket, each beside its dense counterpart (SPEC §7), and the
    tags that say where they came from or why a comparison is absent."""
    measured = {**costs.network_costs(ticket.model, cfg, data, shifted, device),
                **footprint_metrics(trained.footprint, trained.done.resumed_from)}
    side = dense_side(dense.metrics, f"@{costs.robustness_key(cfg)}")
    epochs = cfg.train.epochs - ticket.start_epoch
    metrics = {
        **accuracy_metrics(cfg, ticket, trained, dense, data, device), **pruning.metrics,
        "params": count_params(ticket.model), "filters": count_filters(ticket.model),
        "train_seconds": trained.done.seconds, "ticket_epochs": epochs, **side,
        **{k: v for k, v in measured.items() if not isinstance(v, str)},
    }
    if cfg.measure.enabled:
        m = cfg.measure
        dense_model = model_at(plan, dense, "final", device, cfg.train.channels_last)
        metrics["throughput_img_s"] = measure.throughput(ticket.model, cfg.train, device, m.throughput_steps,
                                                         m.warmup_steps)
        metrics["dense_throughput_img_s"] = measure.throughput(dense_model, cfg.train, device, m.throughput_steps,
                                                               m.warmup_steps)
        metrics["cka"] = costs.cka_to_dense(ticket.model, dense_model, data, cfg)
    phase = Phase(trained.done.seconds, epochs, metrics.get("co2_kg"), metrics.get("energy_kwh"),
                  conditions(device, cfg.train, cfg.jobs), trained.done.resumed_from is not None)
    compared, tags = compare(metrics, phase, Phase.of(dense.metrics))
    metrics.update(compared)
    return metrics, {**tags, **{k: v for k, v in measured.items() if isinstance(v, str)}}


def override_tags(overrides) -> dict[str, str]:
    """``override.<key>`` tags from command-line overrides such as ``density=2``."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {f"override.{k.lstrip('+~')}": v for k, v in pairs}
