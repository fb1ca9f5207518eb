"""Every number a ticket's run reports, each beside its dense counterpart (docs/design.md §7), and
the one statement of its verdict: Eq. 1's word and whether the difference exceeds the noise."""

from __future__ import annotations

import logging

import numpy as np
import torch

from lottery import networks
from lottery.experiment import dense
from lottery.experiment.context import Context
from lottery.experiment.ticket import Ticket, TrainedTicket
from lottery.measure.metrics import Phase, compare, dense_side
from lottery.measure.similarity import cka_to_dense
from lottery.measure.stats import ALPHA
from lottery.measure.trial_costs import network_costs, robustness_key
from lottery.pruning.structures import Pruning
from lottery.tracking.store import Entry
from lottery.training.devices import conditions
from lottery.training.trainer import held_out_accuracy

log = logging.getLogger("lottery")


def verdict(ctx: Context, metrics: dict, tags: dict) -> str:
    """One statement: the difference, Eq. 1's word for it, and whether it exceeds the noise (the
    task's paired test: McNemar's exact test on images, a paired t-test on sequence accuracies;
    docs/design.md §8.2), e.g. ``+2.78 pp, a win by Eq. 1 but within noise: McNemar p=0.087`` or
    ``-2.78 pp, a loss by Eq. 1, significant: McNemar p=0.0213``; a dense network that did not
    learn says so instead of a finding."""
    word = "a win" if metrics["winning"] else "a loss"
    noise = ", significant" if metrics["p_value"] < ALPHA else " but within noise"
    text = f"{metrics['delta_pp']:+.2f} pp, {word} by Eq. 1{noise}: {ctx.data.task.test} p={metrics['p_value']:.3g}"
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
        **trained.done.timings(), "ticket_epochs": epochs,
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
