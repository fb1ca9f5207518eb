"""A network's costs and robustness, measured alike for dense and ticket.

One function measures any network (dense or ticket) so both sides are measured alike; the
dense side is measured once per dense entry and stored with it (keyed by the robustness set,
which a trial may choose). How the two sides compare is ``lottery.metrics``.
"""

from __future__ import annotations

from lottery import measure
from lottery.data import eval_batches, subset
from lottery.robustness import REGEN_VERSION, ShiftedSets, shifted_accuracies
from lottery.store import content_key


def robustness_key(cfg) -> str:
    """Identity of the shifted sets a trial evaluates on (the images they draw, too)."""
    return content_key({**{k: v for k, v in dict(cfg.robustness).items() if k != "enabled"},
                        "regenerated": REGEN_VERSION})


def network_costs(model, cfg, data, shifted: ShiftedSets, device, suffix: str = "") -> dict:
    """FLOPs, training memory, latency and shifted-set accuracies of one network."""
    out: dict = {}
    t = cfg.train
    if cfg.measure.enabled:
        out["flops"] = measure.flops(model)
        out["memory_bytes"], out["memory_method"] = measure.training_memory(model, t, device)
        out["latency_ms_b1"] = measure.latency_ms(model, 1, device, cfg.measure.latency_repeats, t.channels_last)
        out["latency_ms_b128"] = measure.latency_ms(model, 128, device, cfg.measure.latency_repeats, t.channels_last)
    for k, v in shifted_accuracies(model, data, shifted, t, device).items():
        out[f"{k}{suffix}"] = v
    return out


def cka_to_dense(ticket, dense, data, cfg) -> float:
    """Linear CKA of penultimate features on ``measure.cka_images`` class-balanced test images."""
    split = subset(data.test, cfg.measure.cka_images)
    batches = list(eval_batches(data, split, cfg.train.eval_batch_size, cfg.train.channels_last))
    return measure.linear_cka(measure.features(ticket, batches), measure.features(dense, batches))
