"""The dense reference F of a trial: trained once per identity into the store, measured once,
logged once per experiment, and given any rewind point theta_i it lacks by replaying only the
epochs from the nearest earlier one it keeps."""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from lottery import carbon, costs, tracking
from lottery.config import rewind_epochs
from lottery.data import Dataset, describe
from lottery.identity import dense_spec_for
from lottery.models import Plan, ResNet, build, count_filters, count_params
from lottery.store import DenseResult, DenseStore, Entry, content_key
from lottery.train import accuracy, conditions, cpu_state, held_out_accuracy, predict, prepare, train

log = logging.getLogger("lottery")


def fresh_model(plan: Plan, seed: int, device, channels_last: bool) -> ResNet:
    torch.manual_seed(seed)
    return prepare(build(plan), device, channels_last)


def model_at(plan: Plan, entry: Entry, weights, device, channels_last: bool) -> ResNet:
    """The dense network at theta_e (``"final"``: theta_n)."""
    model = prepare(build(plan), device, channels_last)
    model.load_state_dict(entry.weights(weights))
    return model


def run_tags(cfg, key: str, amp: str) -> dict:
    return {"role": "dense", "dense_key": key, "profile": cfg.profile_name, "amp": amp}


def run_params(cfg) -> dict:
    return {k: v for k, v in tracking.flatten(cfg).items() if k.split(".")[0] in ("model", "data", "train", "seed")}


def run_name(cfg) -> str:
    return f"dense-resnet{cfg.model.depth}-s{cfg.seed}"


def train_dense(cfg, plan: Plan, data: Dataset, device, partial, keep: set[int], run: tracking.LiveRun) -> DenseResult:
    """Train the dense reference F, keeping theta_e and the optimizer state for every epoch in
    ``keep`` (resumable), its history streamed to ``run``."""
    model = fresh_model(plan, cfg.seed, device, cfg.train.channels_last)
    with carbon.tracked(cfg.measure, "dense", cfg.jobs) as footprint:
        done = train(model, data, cfg.train, seed=cfg.seed, device=device, keep=keep,
                     state_path=partial / "state.pt", desc="dense", on_epoch=run.epoch)
    predictions = predict(model, data, cfg.train, device)
    metrics = {"accuracy": accuracy(predictions, data.test), "train_seconds": done.seconds,
               "epochs": cfg.train.epochs, "train_images": len(data.train), "params": count_params(model),
               "filters": count_filters(model),
               "train_conditions": conditions(device, cfg.train, cfg.jobs),
               **footprint.metrics(done.resumed_from), **held_out_accuracy(model, data, cfg.train, device)}
    extra = {"predictions": predictions.tolist(), "history": done.history,
             "trained": {"start_ms": int(done.started * 1000), "end_ms": int(time.time() * 1000)}}
    return DenseResult(done.checkpoints, cpu_state(model), metrics, done.optimizers, extra)


def reference(cfg, plan: Plan, data: Dataset, shifted, device, store: DenseStore, experiment: str,
              rewind: int | None) -> tuple[Entry, str]:
    """The trial's dense reference, stored (trained first if missing), measured and logged: its
    entry and its MLflow run id. A run that went live for training ends FAILED if a later step fails."""
    entry, live = stored(cfg, plan, data, device, store, experiment, rewind)
    try:
        entry = measured(cfg, plan, entry, data, shifted, device, store)
        return entry, log_run(cfg, entry, data, experiment, store, live)
    except BaseException as e:
        if live is not None:
            live.end(e)
        raise


def stored(cfg, plan: Plan, data: Dataset, device, store: DenseStore, experiment: str,
           rewind: int | None) -> tuple[Entry, tracking.LiveRun | None]:
    """The stored dense run, trained first if missing (its MLflow run live while it trains, left
    open for ``log_run`` to finish), keeping the configured rewind points and this trial's."""
    defined = dense_spec_for(cfg, device)
    key, amp = content_key(defined), defined["precision"]
    keep = set(rewind_epochs(cfg.train)) | ({rewind} if rewind is not None else set())
    live = []

    def train_now(partial) -> DenseResult:
        tracking.mark_killed(experiment, role="dense", dense_key=key)
        with tracking.live(experiment, run_name(cfg), run_tags(cfg, key, amp), run_params(cfg),
                           cfg.tracking.parent) as run:
            tracking.log_dataset(run.run_id, **describe(cfg.data, data))
            live.append(run)
            return train_dense(cfg, plan, data, device, partial, keep, run)

    entry, trained = store.get_or_train(key, defined, train_now, retrain=cfg.store.retrain)
    log.info("dense %s %s: accuracy %.2f%%", entry.key, "trained" if trained else "reused from the store",
             entry.metrics["accuracy"])
    return entry, (live[0] if live else None)


def with_rewind_point(cfg, plan: Plan, data: Dataset, device, store: DenseStore, entry: Entry, epoch: int) -> Entry:
    """The entry holding theta_epoch: when it lacks it, the dense training is replayed from the
    latest earlier theta_j it keeps (weights and optimizer state; deterministic, so bit-identical
    on CPU to an uninterrupted run) for epoch - j epochs, and theta_epoch is added to the entry."""
    if epoch in entry.epochs:
        return entry
    with store.lock(entry.key):
        entry = store.load(entry.key) or entry  # another trial may have added it meanwhile
        if epoch in entry.epochs:
            return entry
        start = entry.replay_start(epoch)
        log.info("dense %s keeps theta at epochs %s, not theta_%d: replaying epochs %d..%d from theta_%d",
                 entry.key, entry.epochs, epoch, start + 1, epoch, start)
        model = model_at(plan, entry, start, device, cfg.train.channels_last)
        state = store.partial(entry.key) / f"replay-{epoch}.pt"
        done = train(model, data, cfg.train, seed=cfg.seed, device=device, start_epoch=start, stop_epoch=epoch,
                     optimizer_state=entry.optimizer(start), keep={epoch}, state_path=state, desc=f"replay theta_{epoch}")
        entry = store.add_checkpoint(entry, epoch, done.checkpoints[epoch], done.optimizers[epoch])
        state.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            state.parent.rmdir()  # unless another replay's state waits there
        return entry


def measured(cfg, plan: Plan, entry: Entry, data: Dataset, shifted, device, store: DenseStore) -> Entry:
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


def log_run(cfg, entry: Entry, data: Dataset, experiment: str, store: DenseStore, run: tracking.LiveRun | None) -> str:
    """The dense reference's MLflow run in this experiment: the live one that trained it (finished
    here by its trainer), else one written from the entry (its history and training times) the
    first time a trial of this experiment needs it; under the entry's lock, so concurrent trials
    log it once."""
    suffix = f"@{costs.robustness_key(cfg)}"
    numbers = {k.replace(suffix, ""): v for k, v in entry.metrics.items()
               if isinstance(v, (int, float)) and ("@" not in k or k.endswith(suffix))}
    words = {k: v for k, v in entry.metrics.items() if isinstance(v, str)}
    meta = {k: v for k, v in entry.meta.items() if k not in ("predictions", "history")}
    with store.lock(entry.key):
        if run is None:
            tracking.mark_killed(experiment, role="dense", dense_key=entry.key)
            done = [r for r in tracking.find_runs(experiment, role="dense", dense_key=entry.key)
                    if r.info.status in ("FINISHED", "RUNNING")]  # RUNNING: its live trainer finishes it
            if done:
                return done[0].info.run_id
            run = tracking.LiveRun(experiment, run_name(cfg), run_tags(cfg, entry.key, entry.meta["spec"]["precision"]),
                                   run_params(cfg), cfg.tracking.parent, entry.meta.get("trained", {}).get("start_ms"))
            tracking.log_dataset(run.run_id, **describe(cfg.data, data))
            run.history(entry.meta.get("history", []))
        return run.finish(numbers, {"dense.json": meta}, tags=words, end_ms=entry.meta.get("trained", {}).get("end_ms"))
