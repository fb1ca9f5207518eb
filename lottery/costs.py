"""A network's costs and robustness, and how a ticket's compare with its dense reference.

One function measures any network (dense or ticket) so both sides are measured alike; the
dense side is measured once per dense entry and stored with it (keyed by the robustness set,
which a trial may choose); throughput is measured for both nets back to back in the trial's
process, since it depends on the machine of the moment.
"""

from __future__ import annotations

from lottery import measure
from lottery.data import eval_batches
from lottery.robustness import ShiftedSets, shifted_accuracies
from lottery.store import content_key


def robustness_key(cfg) -> str:
    return content_key({k: v for k, v in dict(cfg.robustness).items() if k != "enabled"})


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


def dense_side(dense_metrics: dict, cfg) -> dict:
    """The stored dense costs as ``dense_*`` metrics, robustness for this trial's set."""
    suffix = f"@{robustness_key(cfg)}"
    out = {}
    for k in ("flops", "memory_bytes", "latency_ms_b1", "params", "filters", "co2_kg", "energy_kwh",
              "train_seconds", "accuracy"):
        out[f"dense_{k}"] = dense_metrics.get(k)
    for k in ("cifar10c_accuracy", "cifar102_accuracy"):
        out[f"dense_{k}"] = dense_metrics.get(f"{k}{suffix}")
    return out


def _reduction(ticket, dense):
    return None if ticket is None or not dense else 100.0 * (1.0 - ticket / dense)


def _delta(ticket, dense):
    return None if ticket is None or dense is None else ticket - dense


def compare(ticket: dict, dense: dict, dense_epochs: int, ticket_epochs: int) -> dict:
    """Reductions (%), deltas (pp) and the per-epoch training speed-up (x) of a ticket."""
    per_epoch_dense = dense["dense_train_seconds"] / dense_epochs
    per_epoch_ticket = ticket["train_seconds"] / max(ticket_epochs, 1)
    return {
        "flops_reduction_pct": _reduction(ticket.get("flops"), dense.get("dense_flops")),
        "memory_reduction_pct": _reduction(ticket.get("memory_bytes"), dense.get("dense_memory_bytes")),
        "co2_reduction_pct": _reduction(ticket.get("co2_kg"), dense.get("dense_co2_kg")),
        "speedup": per_epoch_dense / per_epoch_ticket if per_epoch_ticket > 0 else None,
        "cifar10c_delta_pp": _delta(ticket.get("cifar10c_accuracy"), dense.get("dense_cifar10c_accuracy")),
        "cifar102_delta_pp": _delta(ticket.get("cifar102_accuracy"), dense.get("dense_cifar102_accuracy")),
    }


def cka_to_dense(ticket, dense, data, cfg) -> float:
    """Linear CKA of penultimate features on the first ``measure.cka_images`` test images."""
    n = min(cfg.measure.cka_images, len(data.test))
    split = type(data.test)(data.test.x[:n], data.test.y[:n])
    batches = list(eval_batches(data, split, cfg.train.eval_batch_size, cfg.train.channels_last))
    return measure.linear_cka(measure.features(ticket, batches), measure.features(dense, batches))
