"""One trial, top to bottom: its design derived (every mistake one line, before any work), skipped
if it already finished, its context built whole (fast path settled, data loaded), then the dense
reference, the ticket pruned, built and trained (``ticket``, or in rounds ``imp``), measured beside
its dense network (``ticket_metrics``) and logged. The ticket's MLflow run exists from the start
(RUNNING, its history streamed per epoch) and ends FINISHED with its results and weights, or FAILED."""

from __future__ import annotations

import logging
import shutil
from contextlib import AbstractContextManager

import torch
from omegaconf import OmegaConf

from lottery.config import TrialConfig
from lottery.errors import LotteryError
from lottery.experiment import dense, estimate, fast_path
from lottery.experiment.context import Context, Records
from lottery.experiment.design import Design, derive
from lottery.experiment.imp import imp
from lottery.experiment.ticket import one_shot, prune, run_name
from lottery.experiment.ticket_metrics import ticket_metrics, verdict
from lottery.measure.metrics import console
from lottery.tracking import connection, liveness, outbox, runs
from lottery.tracking.tickets import TICKET_FILE, ticket_file
from lottery.training.checkpoints import discard
from lottery.training.compiling import begin_trial
from lottery.training.data import describe, train_images
from lottery.training.devices import configure, determinism, name_of, not_deterministic
from lottery.training.recipe import Recipe

log = logging.getLogger("lottery")


def run(cfg: TrialConfig, overrides: list[str] = (), tags: dict | None = None, job: int = 0) -> dict:
    """Run one trial and return its metrics (also logged to MLflow, with ``overrides`` and ``tags``
    as tags). A trial whose identity and seed already finished in the experiment is skipped, so
    re-running a sweep completes exactly the missing trials; an earlier run of it that a killed
    process left RUNNING is marked KILLED. ``job``: its number in a multirun (its GPU)."""
    design = derive(cfg, job)
    records = Records.open(cfg)
    if done := (already_done(design, records) if design.mode.prunes else dense.finished(design, records)):
        return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    configure(design.device, cfg.train)
    begin_trial(cfg.paths.root)  # dynamo's caches this trial's, inductor's under paths.root: before any compile
    log.info("device: %s", name_of(design.device))
    warn_if_slow(design)
    settled = fast_path.settle(cfg, design.device)  # layout and compile, before any network is built
    try:
        if not design.mode.prunes:
            return dense_trial(Context.open(design, records, settled))
        with ticket_run(design, records, settled, overrides, tags) as live:  # live before the data loads
            return ticket_trial(Context.open(design, records, settled), live)
    except RuntimeError as e:
        if (line := not_deterministic(e, design.device)) is not None:
            raise line from None
        raise


def already_done(design: Design, records: Records) -> dict | None:
    """The metrics of this very trial if it already ended: results MLflow missed last time, logged
    now from the outbox, or a finished run (re-running a sweep skips it)."""
    synced = outbox.sync_all(records.outbox, design.keys["config_key"])
    if synced:
        return synced[-1]
    done = [r for r in connection.find_runs(records.experiment, role="ticket", config_key=design.keys["config_key"])
            if r.info.status == "FINISHED"]
    if not done:
        return None
    log.info("skipped: this config already finished as MLflow run %s (%s)", done[0].info.run_id, done[0].info.run_name)
    return {**done[0].data.metrics, "run_id": done[0].info.run_id, "skipped": True}


SLOW_EPOCHS = 50  # a profile longer than this on a CPU is worth a warning


def warn_if_slow(design: Design) -> None:
    """``device=auto`` that found no GPU, for a long profile: say so, and what one network costs here."""
    cfg = design.cfg
    if cfg.device != "auto" or design.device.type != "cpu" or cfg.train.epochs <= SLOW_EPOCHS:
        return
    work = cfg.train.epochs * train_images(cfg.data) * estimate.network_flops(cfg, 0)
    hours = work / estimate.timed_speed(cfg).flop_s / 3600
    log.warning("device=auto found no GPU: training on the CPU, where one dense network of this profile (%d epochs) "
                "takes about %.1f h; set device=cpu to silence this, or run on a GPU", cfg.train.epochs, hours)


def dense_trial(ctx: Context) -> dict:
    """``mode=dense``: the reference alone, trained (or found), measured and logged."""
    entry, run_id = dense.reference(ctx)
    return {"accuracy": entry.metrics["accuracy"], "run_id": run_id}


def ticket_run(design: Design, records: Records, settled: fast_path.Settled, overrides: list[str],
               tags: dict | None) -> AbstractContextManager[runs.LiveRun]:
    """The ticket's MLflow run, live from the trial's start (a RUNNING run a killed process left is
    marked KILLED): its tags, and as params the config it trains by with the block count and the
    rewind epoch it resolves to."""
    cfg = design.cfg
    liveness.mark_killed(records.experiment, role="ticket", config_key=design.keys["config_key"])
    label = f"p{cfg.density}" + ("" if cfg.structure == "layer" else f"-{cfg.structure}")
    start_tags = {"role": "ticket", "mode": design.mode.name, "criterion": cfg.criterion.name,
                  "structure": cfg.structure, "profile": cfg.profile_name, "seed": cfg.seed,
                  "model": design.model_name, **design.keys, "device": str(design.device), "amp": design.precision,
                  "deterministic": determinism(design.device), "fast_path": settled.tag,
                  "recipe": Recipe.of(cfg).summary(),
                  **override_tags(overrides), **(tags or {})}
    params = {**runs.flatten(settled.config(cfg)), "blocks_to_remove": design.remove, "rewind_epoch": design.rewind}
    return runs.live(records.experiment, run_name(design, label), start_tags, params, cfg.tracking.parent)


def ticket_trial(ctx: Context, live: runs.LiveRun) -> dict:
    cfg = ctx.cfg
    runs.log_dataset(live.run_id, **describe(cfg.data, ctx.data))
    # theta_0 is the seed's initialisation, the dense network's own: a mode that scores it prunes
    # before any training, so a criterion that cannot choose stops the trial first.
    early = prune(ctx, ctx.build(cfg.seed)) if ctx.mode.scores_at_init else None
    entry, dense_run = dense.reference(ctx)
    if ctx.mode.retrains_in(ctx.rounds):
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
             metrics["filters"], metrics["dense_params"], metrics["params"], console(metrics, ctx.shifted.labels()),
             live.run_id)
    return {**metrics, "run_id": live.run_id, "name": name}


def override_tags(overrides) -> dict[str, str]:
    """``override.<key>`` tags from command-line overrides such as ``density=2``."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    return {f"override.{k.lstrip('+~')}": v for k, v in pairs}
