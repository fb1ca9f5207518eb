"""The dense reference F of a trial: trained once per identity into the store, measured once,
logged once per experiment, and given any rewind point theta_i it lacks by replaying only the
epochs from the nearest earlier one it keeps."""

from __future__ import annotations

import contextlib
import functools
import logging
import time

from torch import nn

from lottery import networks
from lottery.config import TrialConfig
from lottery.errors import one_line
from lottery.experiment.context import Context, Records
from lottery.experiment.design import Design
from lottery.experiment.identity import DENSE_READS, dense_spec
from lottery.files import content_key
from lottery.measure import carbon
from lottery.measure.metrics import CHANCE_MARGIN_PP, at_chance
from lottery.measure.trial_costs import network_costs, robustness_key
from lottery.tracking import connection, liveness, runs
from lottery.tracking.logged_model import log_network
from lottery.tracking.store import DenseResult, Entry
from lottery.training.checkpoints import cpu_state, discard
from lottery.training.data import describe, fingerprint
from lottery.training.devices import conditions, determinism
from lottery.training.recipe import Recipe
from lottery.training.trainer import held_out_accuracy, predict, rewind_epochs, train

log = logging.getLogger("lottery")


def model_at(ctx: Context, entry: Entry, weights) -> nn.Module:
    """The dense network at theta_e (``"final"``: theta_n), ready on the trial's device."""
    model = ctx.build(ctx.cfg.seed)
    model.load_state_dict(entry.weights(weights))
    return model


def run_tags(ctx: Context, key: str, amp: str) -> dict:
    return {"role": "dense", "dense_key": key, "profile": ctx.cfg.profile_name, "amp": amp, "model": ctx.model_name,
            "recipe": Recipe.of(ctx.cfg).summary()}


def run_params(cfg: TrialConfig) -> dict:
    return {k: v for k, v in runs.flatten(cfg).items() if k.split(".")[0] in (*DENSE_READS, "seed")}


def run_name(ctx: Context) -> str:
    return f"dense-{ctx.model_name}-s{ctx.cfg.seed}"


def train_dense(ctx: Context, partial, keep: set[int], run: runs.LiveRun) -> DenseResult:
    """Train the dense reference F, keeping theta_e and the optimizer state for every epoch in
    ``keep`` (resumable), its history streamed to ``run``."""
    cfg = ctx.cfg
    model = ctx.build(cfg.seed)
    metered = functools.partial(carbon.tracked, cfg.measure, "dense", cfg.jobs, ctx.device)  # the epochs alone
    done = train(model, ctx.data, ctx.job(keep=frozenset(keep), state_path=partial / "state.pt", desc="dense",
                                          on_epoch=run.epoch, metered=metered))
    footprint = done.metered
    predictions = predict(model, ctx.data, cfg.train, ctx.device)
    data = ctx.data
    metrics = {"accuracy": data.accuracy(predictions), **data.task.summary(predictions, data.test.y),
               **done.timings(),
               "epochs": cfg.train.epochs, "train_images": len(ctx.data.train), "params": networks.count_params(model),
               "filters": networks.count_filters(model), **footprint.metrics(),
               **held_out_accuracy(model, ctx.data, cfg.train, ctx.device)}
    tags = {"train_conditions": conditions(ctx.device, cfg.train, cfg.jobs), "compiled": done.compiled,
            "fast_path": ctx.fast_path,
            "deterministic": determinism(ctx.device),
            **footprint.tags(done.resumed_from)}
    extra = {"predictions": predictions.tolist(), "history": done.history,
             "trained": {"start_ms": int(done.started * 1000), "end_ms": int(time.time() * 1000)}}
    return DenseResult(done.checkpoints, cpu_state(model), metrics, done.optimizers, extra, tags)


def reference(ctx: Context) -> tuple[Entry, str]:
    """The trial's dense reference, stored (trained first if missing), holding the rewind point
    the ticket starts from, measured and logged: its entry and its MLflow run id. A run that went
    live for training ends FAILED if a later step fails."""
    entry, live = stored(ctx)
    try:
        entry = measured(ctx, with_rewind_point(ctx, entry))
    except BaseException as e:
        if live is not None:
            live.end(e)
        raise
    try:
        return entry, log_run(ctx, entry, live)
    except Exception as e:  # noqa: BLE001 - the tracking store failed; the entry is safe in the store
        log.warning("the dense run of %s was not logged (%s); the next trial that needs it logs it from the store",
                    entry.key, one_line(e))
        return entry, "unlogged"


def spec(cfg: TrialConfig, precision: str) -> tuple[dict, str]:
    """What defines the trial's dense network (``identity.dense_spec``), and its store key."""
    defined = dense_spec(cfg, fingerprint(cfg.data), precision)
    return defined, content_key(defined)


def finished(design: Design, records: Records) -> dict | None:
    """The result of a ``mode=dense`` trial that already ended, read without loading data: its
    entry in the store and a FINISHED run of it in this experiment (with its logged model when
    ``tracking.log_model`` is on), so re-running a sweep skips its dense step as it skips tickets."""
    cfg = design.cfg
    if cfg.store.retrain:
        return None
    _, key = spec(cfg, design.precision)
    entry = records.store.load(key)
    if entry is None:
        return None
    done = [r for r in connection.find_runs(records.experiment, role="dense", dense_key=key)
            if r.info.status == "FINISHED" and (has_model(r) or not cfg.tracking.log_model)]
    if not done:
        return None
    log.info("skipped: dense %s is in the store and finished as MLflow run %s", key, done[0].info.run_id)
    return {"accuracy": entry.metrics["accuracy"], "run_id": done[0].info.run_id, "skipped": True}


def has_model(run) -> bool:
    """Whether an MLflow run (as ``find_runs`` returns it) has its network logged as a model."""
    return bool(run.outputs and run.outputs.model_outputs)


def stored(ctx: Context) -> tuple[Entry, runs.LiveRun | None]:
    """The stored dense run, trained first if missing (its MLflow run live while it trains, left
    open for ``log_run`` to finish), keeping the configured rewind points and this trial's."""
    cfg = ctx.cfg
    defined, key = spec(cfg, ctx.precision)
    amp = defined["precision"]
    keep = set(rewind_epochs(cfg.train)) | ({ctx.kept_rewind} if ctx.kept_rewind is not None else set())
    live = []

    def train_now(partial) -> DenseResult:
        liveness.mark_killed(ctx.experiment, role="dense", dense_key=key)
        with runs.live(ctx.experiment, run_name(ctx), run_tags(ctx, key, amp), run_params(cfg),
                           cfg.tracking.parent) as run:
            runs.log_dataset(run.run_id, **describe(cfg.data, ctx.data))
            live.append(run)
            return train_dense(ctx, partial, keep, run)

    entry, trained = ctx.store.get_or_train(key, defined, train_now, retrain=cfg.store.retrain)
    log.info("dense %s %s: accuracy %.2f%%", entry.key, "trained" if trained else "reused from the store",
             entry.metrics["accuracy"])
    if learning_tags(ctx, entry)["dense_at_chance"] == "true":
        log.warning("the dense network %s ended at %.2f%%, within %g pp of chance (%.1f%% for %d classes): it did not "
                    "learn, and its tickets are no findings (check the recipe: optim.lr, train.epochs, the data)",
                    entry.key, entry.metrics["accuracy"], CHANCE_MARGIN_PP, 100 / ctx.data.num_classes,
                    ctx.data.num_classes)
    return entry, (live[0] if live else None)


def learning_tags(ctx: Context, entry: Entry) -> dict:
    """Whether the dense network learned: ``dense_at_chance`` (true when its accuracy ended within
    a few points of chance), tagged on its run and its tickets', and marked in tables."""
    return {"dense_at_chance": str(at_chance(entry.metrics["accuracy"], ctx.data.num_classes)).lower()}


def with_rewind_point(ctx: Context, entry: Entry) -> Entry:
    """The entry holding the theta_i the ticket starts from: when it lacks it, the dense training
    is replayed from the latest earlier theta_j it keeps (weights and optimizer state;
    deterministic, so bit-identical on CPU to an uninterrupted run) for i - j epochs, and theta_i
    is added to the entry."""
    epoch, store = ctx.kept_rewind, ctx.store
    if epoch is None or epoch in entry.epochs:
        return entry
    with store.lock(entry.key):
        entry = store.load(entry.key) or entry  # another trial may have added it meanwhile
        if epoch in entry.epochs:
            return entry
        start = entry.replay_start(epoch)
        log.info("dense %s keeps theta at epochs %s, not theta_%d: replaying epochs %d..%d from theta_%d",
                 entry.key, entry.epochs, epoch, start + 1, epoch, start)
        model = model_at(ctx, entry, start)
        state = store.partial(entry.key) / f"replay-{epoch}.pt"
        done = train(model, ctx.data, ctx.job(start=start, stop=epoch, optimizer_state=entry.optimizer(start),
                                              keep=frozenset({epoch}), state_path=state, desc=f"replay theta_{epoch}"))
        entry = store.add_checkpoint(entry, epoch, done.checkpoints[epoch], done.optimizers[epoch])
        discard(state)
        with contextlib.suppress(OSError):
            state.parent.rmdir()  # unless another replay's state waits there
        return entry


def measured(ctx: Context, entry: Entry) -> Entry:
    """Measure the dense network's costs, robustness and test predictions once per entry (and
    robustness set), on the same images and by the same functions as its tickets."""
    cfg, data, shifted = ctx.cfg, ctx.data, ctx.shifted
    suffix = f"@{robustness_key(cfg)}"
    wanted = {"flops", *(("memory_bytes",) if cfg.measure.enabled else ())}
    if shifted.cifar10c:
        wanted.add(f"cifar10c_accuracy{suffix}")
    if shifted.cifar102 is not None:
        wanted.add(f"cifar102_accuracy{suffix}")
    if data.val is not None:
        wanted.add("val_accuracy")
    if wanted <= set(entry.metrics) and "predictions" in entry.meta:
        return entry
    model = model_at(ctx, entry, "final")
    metrics, tags = network_costs(ctx, model, suffix)
    metrics.update(held_out_accuracy(model, data, cfg.train, ctx.device))
    return ctx.store.update_metrics(entry, metrics, tags, predictions=predict(model, data, cfg.train,
                                                                              ctx.device).tolist())


def log_run(ctx: Context, entry: Entry, run: runs.LiveRun | None) -> str:
    """The dense reference's MLflow run in this experiment: the live one that trained it (finished
    here by its trainer), else one written from the entry (its history and training times) the
    first time a trial of this experiment needs it (a finished one logged without its model given
    it when ``tracking.log_model`` is on); under the entry's lock, so concurrent trials log it once."""
    cfg, experiment = ctx.cfg, ctx.experiment
    suffix = f"@{robustness_key(cfg)}"
    numbers = {k.replace(suffix, ""): v for k, v in entry.metrics.items() if "@" not in k or k.endswith(suffix)}
    meta = {k: v for k, v in entry.meta.items() if k not in ("predictions", "history")}
    with ctx.store.lock(entry.key):
        if run is None:
            liveness.mark_killed(experiment, role="dense", dense_key=entry.key)
            done = [r for r in connection.find_runs(experiment, role="dense", dense_key=entry.key)
                    if r.info.status in ("FINISHED", "RUNNING")]  # RUNNING: its live trainer finishes it
            if done:
                if cfg.tracking.log_model and done[0].info.status == "FINISHED" and not has_model(done[0]):
                    log_network(done[0].info.run_id, model_at(ctx, entry, "final"))  # logged without it before
                return done[0].info.run_id
            run = runs.LiveRun(experiment, run_name(ctx), run_tags(ctx, entry.key, entry.meta["spec"]["precision"]),
                                   run_params(cfg), cfg.tracking.parent, entry.meta.get("trained", {}).get("start_ms"))
            runs.log_dataset(run.run_id, **describe(cfg.data, ctx.data))
            run.history(entry.meta.get("history", []))
        network = model_at(ctx, entry, "final") if cfg.tracking.log_model else None
        return run.finish(runs.Results(numbers, {**entry.tags, **learning_tags(ctx, entry)}, {"dense.json": meta},
                                           end_ms=entry.meta.get("trained", {}).get("end_ms"), network=network))
