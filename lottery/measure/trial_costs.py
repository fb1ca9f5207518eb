"""A network of a trial measured: its costs and robustness, alike for dense and ticket.

One function measures any network (dense or ticket) so both sides are measured alike; the
dense side is measured once per dense entry and stored with it (keyed by the robustness set,
which a trial may choose). How the two sides compare is ``lottery.measure.metrics``. The trial's
context (``ctx``) is passed in: its device, config, data and shifted sets.
"""

from __future__ import annotations

from lottery.config import TrialConfig
from lottery.files import content_key
from lottery.measure import costs
from lottery.measure.robustness import REGEN_VERSION, shifted_accuracies
from lottery.training.recipe import Recipe


def robustness_key(cfg: TrialConfig) -> str:
    """Identity of the shifted sets a trial evaluates on (the images they draw, too)."""
    return content_key({**{k: v for k, v in dict(cfg.robustness).items() if k != "enabled"},
                        "regenerated": REGEN_VERSION})


def network_costs(ctx, model, suffix: str = "", beside=None) -> tuple[dict, dict]:
    """FLOPs, the device costs and shifted-set accuracies of one network of the trial (``ctx``:
    its ``lottery.experiment.context.Context``), and the tags that say how they were measured;
    ``beside``: the dense network, whose device costs are then measured with the ticket's,
    turn by turn, and returned as ``dense_*``."""
    out, tags = device_costs(ctx, [model] if beside is None else [model, beside])
    out["flops"] = costs.flops(model)  # counted, not timed: cheap enough for every run
    for k, v in shifted_accuracies(model, ctx.data, ctx.shifted, ctx.cfg.train, ctx.device).items():
        out[f"{k}{suffix}"] = v
    return out, tags


def device_costs(ctx, models: list) -> tuple[dict, dict]:
    """Training memory, latency and training throughput on the trial's device, in its precision
    (nothing when ``measure.enabled`` is off), of the first network and, as ``dense_*``, of the
    second: the timings of both interleaved, repeat by repeat, so a machine whose load comes and
    goes slows both alike; medians, with their interquartile range as ``*_iqr``."""
    cfg, device, m = ctx.cfg, ctx.device, ctx.cfg.measure
    if not m.enabled:
        return {}, {}
    t, recipe = cfg.train, Recipe.of(cfg)
    timed = {"latency_ms_b1": costs.latencies(models, 1, device, m.latency_repeats, t),
             "latency_ms_b128": costs.latencies(models, 128, device, m.latency_repeats, t),
             "throughput_img_s": costs.throughputs(models, recipe, device, m.throughput_steps, m.warmup_steps)}
    out, method = {}, ""
    for k, (model, prefix) in enumerate(zip(models, ("", "dense_"))):
        out[f"{prefix}memory_bytes"], method = costs.training_memory(model, recipe, device)
        for name, samples in timed.items():
            out[f"{prefix}{name}"], out[f"{prefix}{name}_iqr"] = costs.median_and_spread(samples[k])
    return out, {"memory_method": method}
