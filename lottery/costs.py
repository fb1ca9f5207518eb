"""A network's costs and robustness, and how a ticket's compare with its dense reference.

One function measures any network (dense or ticket) so both sides are measured alike; the
dense side is measured once per dense entry and stored with it (keyed by the robustness set,
which a trial may choose); throughput is measured for both nets back to back in the trial's
process, since it depends on the machine of the moment.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def dense_side(dense_metrics: dict, cfg) -> dict:
    """The stored dense costs as ``dense_*`` metrics, robustness for this trial's set."""
    suffix = f"@{robustness_key(cfg)}"
    out = {}
    for k in ("flops", "memory_bytes", "latency_ms_b1", "latency_ms_b128", "params", "filters", "co2_kg",
              "energy_kwh", "train_seconds", "accuracy"):
        out[f"dense_{k}"] = dense_metrics.get(k)
    for k in ("cifar10c_accuracy", "cifar102_accuracy"):
        out[f"dense_{k}"] = dense_metrics.get(f"{k}{suffix}")
    return out


def _reduction(ticket, dense):
    return None if ticket is None or not dense else 100.0 * (1.0 - ticket / dense)


def _delta(ticket, dense):
    return None if ticket is None or dense is None else ticket - dense


def _per_epoch(value, epochs: int):
    return None if value is None else value / max(epochs, 1)


@dataclass
class Phase:
    """What is needed to compare one training phase (dense or ticket) with another."""

    seconds: float
    epochs: int
    co2_kg: float | None
    energy_kwh: float | None
    conditions: str  # device, threads, precision, channels_last, trials at once
    resumed: bool  # an interrupted phase's energy and time are not one run's

    @classmethod
    def of(cls, dense_metrics: dict) -> "Phase":
        """The dense training, as its store entry recorded it."""
        m = dense_metrics
        return cls(m["train_seconds"], m["epochs"], m.get("co2_kg"), m.get("energy_kwh"),
                   m.get("train_conditions", "unrecorded"), m.get("co2_covers", "all") != "all")


def wall_clock_difference(dense: Phase, ticket: Phase) -> str | None:
    """Why the two phases' wall times are not comparable, or None when they are."""
    if dense.conditions != ticket.conditions:
        return f"trained under other conditions (dense: {dense.conditions}; ticket: {ticket.conditions})"
    if "jobs=1" not in ticket.conditions.split():
        return "trained beside other trials"
    return None


def compare(ticket: dict, dense: dict, ticket_phase: Phase, dense_phase: Phase) -> tuple[dict, dict]:
    """Reductions (%), deltas (pp) and speed-ups (x) of a ticket, like for like, and tags that
    say why a comparison is absent.

    ``speedup`` is the ratio of the training throughputs measured back to back in this process;
    ``speedup_wall`` (per epoch) only when both trainings ran under the same conditions, alone;
    CO2 and energy per trained epoch, and only when neither phase was resumed.
    """
    tags = {}
    metrics = {
        "flops_reduction_pct": _reduction(ticket.get("flops"), dense.get("dense_flops")),
        "memory_reduction_pct": _reduction(ticket.get("memory_bytes"), dense.get("dense_memory_bytes")),
        "speedup": None if not ticket.get("throughput_img_s") or not ticket.get("dense_throughput_img_s")
        else ticket["throughput_img_s"] / ticket["dense_throughput_img_s"],
        "cifar10c_delta_pp": _delta(ticket.get("cifar10c_accuracy"), dense.get("dense_cifar10c_accuracy")),
        "cifar102_delta_pp": _delta(ticket.get("cifar102_accuracy"), dense.get("dense_cifar102_accuracy")),
    }
    why = wall_clock_difference(dense_phase, ticket_phase)
    if why is None:
        metrics["speedup_wall"] = (dense_phase.seconds / dense_phase.epochs) / (ticket_phase.seconds / ticket_phase.epochs)
    else:
        tags["speedup_wall_absent"] = why
    if dense_phase.resumed or ticket_phase.resumed:
        tags["co2_reduction_absent"] = "a training phase was resumed: its energy covers part of a run"
    else:
        for key in ("co2_kg", "energy_kwh"):
            name = key.split("_")[0]
            metrics[f"{name}_reduction_pct"] = _reduction(_per_epoch(getattr(ticket_phase, key), ticket_phase.epochs),
                                                          _per_epoch(getattr(dense_phase, key), dense_phase.epochs))
    return metrics, tags


def cka_to_dense(ticket, dense, data, cfg) -> float:
    """Linear CKA of penultimate features on ``measure.cka_images`` class-balanced test images."""
    split = subset(data.test, cfg.measure.cka_images)
    batches = list(eval_batches(data, split, cfg.train.eval_batch_size, cfg.train.channels_last))
    return measure.linear_cka(measure.features(ticket, batches), measure.features(dense, batches))
