"""A network's costs and robustness, measured alike for dense and ticket.

One function measures any network (dense or ticket) so both sides are measured alike; the
dense side is measured once per dense entry and stored with it (keyed by the robustness set,
which a trial may choose). How the two sides compare is ``lottery.metrics``.
"""

from __future__ import annotations

from lottery import measure
from lottery.data import eval_batches, subset
from lottery.robustness import REGEN_VERSION, shifted_accuracies
from lottery.store import content_key


def robustness_key(cfg) -> str:
    """Identity of the shifted sets a trial evaluates on (the images they draw, too)."""
    return content_key({**{k: v for k, v in dict(cfg.robustness).items() if k != "enabled"},
                        "regenerated": REGEN_VERSION})


def network_costs(ctx, model, suffix: str = "") -> tuple[dict, dict]:
    """FLOPs, training memory, latency and shifted-set accuracies of one network of the trial
    (``ctx``: its ``lottery.context.Context``), and the tags that say how they were measured."""
    cfg, device = ctx.cfg, ctx.device
    t = cfg.train
    out, tags = {"flops": measure.flops(model)}, {}  # counted, not timed: cheap enough for every run
    if cfg.measure.enabled:
        out["memory_bytes"], tags["memory_method"] = measure.training_memory(model, t, device)
        out["latency_ms_b1"] = measure.latency_ms(model, 1, device, cfg.measure.latency_repeats, t.channels_last)
        out["latency_ms_b128"] = measure.latency_ms(model, 128, device, cfg.measure.latency_repeats, t.channels_last)
    for k, v in shifted_accuracies(model, ctx.data, ctx.shifted, t, device).items():
        out[f"{k}{suffix}"] = v
    return out, tags


def cka_to_dense(ticket, dense, data, cfg) -> float:
    """Linear CKA of penultimate features on ``measure.cka_images`` class-balanced test images."""
    split = subset(data.test, cfg.measure.cka_images)
    batches = list(eval_batches(data, split, cfg.train.eval_batch_size, cfg.train.channels_last))
    return measure.linear_cka(measure.features(ticket, batches), measure.features(dense, batches))
