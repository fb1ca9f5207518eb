"""Every number a ticket reports beside its dense network, one row each (docs/design.md §7).

A row names the metric, says how it is measured, where its dense counterpart comes from, how the
two compare (the rule and the name of the comparison) and how the console shows it. The dense
side, the comparisons and the console line are all driven by this table: adding a metric is one
row (plus its measurement, if new).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass
class Phase:
    """What is needed to compare one training phase (dense or ticket) with another."""

    seconds: float
    epochs: int
    co2_kg: float | None
    energy_kwh: float | None
    conditions: str  # device, threads, precision, channels_last, compile, trials at once
    resumed: bool  # an interrupted phase's energy and time are not one run's

    @classmethod
    def of(cls, entry) -> "Phase":
        """The dense training, as its store entry recorded it (``lottery.tracking.store.Entry``)."""
        m, t = entry.metrics, entry.tags
        return cls(m["train_seconds"], m["epochs"], m.get("co2_kg"), m.get("energy_kwh"),
                   t.get("train_conditions", "unrecorded"), t.get("co2_covers", "all") != "all")


class Absent(Exception):
    """A comparison that would not be like for like; its message says why."""


def wall_clock_difference(dense: Phase, ticket: Phase) -> str | None:
    """Why the two phases' wall times are not comparable, or None when they are."""
    if dense.conditions != ticket.conditions:
        return f"trained under other conditions (dense: {dense.conditions}; ticket: {ticket.conditions})"
    if "jobs=1" not in ticket.conditions.split():
        return "trained beside other trials"
    return None


def reduction(t, d, tp: Phase, dp: Phase):
    return None if t is None or not d else 100.0 * (1.0 - t / d)


def delta(t, d, tp: Phase, dp: Phase):
    return None if t is None or d is None else t - d


def ratio(t, d, tp: Phase, dp: Phase):
    return None if not t or not d else t / d


def per_epoch_reduction(t, d, tp: Phase, dp: Phase):
    if tp.resumed or dp.resumed:
        raise Absent("a training phase was resumed: its energy covers part of a run")
    why = wall_clock_difference(dp, tp)
    if why is not None:
        raise Absent(why)
    return None if t is None or d is None else reduction(t / max(tp.epochs, 1), d / max(dp.epochs, 1), tp, dp)


def wall_ratio(t, d, tp: Phase, dp: Phase):
    why = wall_clock_difference(dp, tp)
    if why is not None:
        raise Absent(why)
    return (d / dp.epochs) / (t / tp.epochs)


STORED, LIVE, NONE = "stored", "live", "none"  # where the dense counterpart comes from
CHANCE_MARGIN_PP = 5.0  # a network within this many points of chance accuracy did not learn


def at_chance(accuracy: float, classes: int) -> bool:
    """Whether an accuracy (%) is at or near chance (100 / classes, within ``CHANCE_MARGIN_PP``)."""
    return accuracy <= 100.0 / classes + CHANCE_MARGIN_PP


@dataclass(frozen=True)
class Metric:
    name: str  # the ticket's key; its dense counterpart is logged as dense_<name>
    how: str  # how it is measured
    dense: str = STORED  # stored with the dense entry, measured live beside the ticket, or none
    rule: Callable | None = None  # (ticket, dense, ticket phase, dense phase) -> comparison
    compared: str = ""  # the comparison's key
    console: str = ""  # format of the comparison (or of the value, without one) on the console line; a
    # reduction is shown as the signed change it is (a 23.1 % reduction: -23.1 %, an increase: +5.5 %)
    speed: bool = False  # the comparison is a speed ratio (or a reduction of time or energy): bounded by the FLOPs
    shifted: bool = False  # stored per robustness set (key suffix)
    label: str = ""  # the console's {label}, unless the measurement names itself (``console``'s labels)


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "top-1 % on the test split after the last epoch (a language model: next-token accuracy)",
           rule=delta, compared="delta_pp"),
    Metric("loss", "mean next-token cross-entropy (nats) on the test sequences (language models)"),
    Metric("perplexity", "exp of the mean next-token loss on the test sequences (language models)", rule=ratio,
           compared="perplexity_ratio", console="perplexity x{:.3f}"),
    Metric("val_accuracy", "top-1 % on the validation split held out of training (data.val_size)",
           rule=delta, compared="val_delta_pp"),
    Metric("params", "parameters"),
    Metric("filters", "output channels of every convolution"),
    Metric("flops", "forward FLOPs per image (torch.utils.flop_counter)", rule=reduction,
           compared="flops_reduction_pct", console="FLOPs {:+.1f}%"),
    Metric("memory_bytes", "training step at the training batch (see measure.training_memory), both nets in this "
           "process", dense=LIVE, rule=reduction, compared="memory_reduction_pct", console="memory {:+.1f}%"),
    Metric("throughput_img_s", "steady-state training images/s, both nets back to back in this process",
           dense=LIVE, rule=ratio, compared="speedup", console="speed-up {:.2f}x", speed=True),
    Metric("train_seconds", "wall time of the training epochs", rule=wall_ratio, compared="speedup_wall", speed=True),
    Metric("compile_seconds", "compiling the network before the first epoch (a compiled path), outside train_seconds"),
    Metric("latency_ms_b1", "median forward latency at batch 1, in the training precision", dense=LIVE),
    Metric("latency_ms_b128", "median forward latency at batch 128, in the training precision", dense=LIVE),
    Metric("co2_kg", "codecarbon, offline, over the training phase", rule=per_epoch_reduction,
           compared="co2_reduction_pct", console="CO2 per epoch {:+.1f}%", speed=True),
    Metric("energy_kwh", "codecarbon, offline, over the training phase", rule=per_epoch_reduction,
           compared="energy_reduction_pct", speed=True),
    Metric("cifar10c_accuracy", "mean top-1 % over CIFAR-10-C corruptions x severities", rule=delta,
           compared="cifar10c_delta_pp", console="{label} {:+.2f} pp", label="CIFAR-10-C", shifted=True),
    Metric("cifar102_accuracy", "top-1 % on CIFAR-10.2", rule=delta, compared="cifar102_delta_pp",
           console="CIFAR-10.2 {:+.2f} pp", shifted=True),
    Metric("cka", "linear CKA of penultimate features to the dense network", dense=NONE, console="CKA {:.3f}"),
)


def dense_side(dense_metrics: dict, suffix: str) -> dict:
    """The stored dense values as ``dense_*`` metrics (shifted sets: this trial's, by ``suffix``)."""
    return {f"dense_{m.name}": dense_metrics.get(f"{m.name}{suffix}" if m.shifted else m.name)
            for m in METRICS if m.dense == STORED}


SPEED_MARGIN = 0.5  # how far beyond what the FLOPs allow a measured speed ratio may lie before it is unreliable


def speed_bounds(metrics: dict) -> tuple[float, float] | None:
    """The speed ratios (dense time / ticket time) a ticket can show against its dense network: not
    slower, and not faster than its fewer FLOPs allow, each within ``SPEED_MARGIN``."""
    if not metrics.get("flops") or not metrics.get("dense_flops"):
        return None
    return 1 / (1 + SPEED_MARGIN), metrics["dense_flops"] / metrics["flops"] * (1 + SPEED_MARGIN)


def _as_speed(m: Metric, value: float) -> float:
    """A speed-up as it is, a reduction of time or energy per epoch as the speed ratio it implies."""
    return value if not m.compared.endswith("reduction_pct") else (1 / (1 - value / 100) if value < 100 else math.inf)


def compare(metrics: dict, ticket: Phase, dense: Phase) -> tuple[dict, dict]:
    """Every row's comparison of ``metrics`` (ticket values and their ``dense_*``), and tags that
    say why a comparison is absent: like for like it could not be, or (``*_unreliable``) a speed
    ratio outside what the FLOPs allow, which a busy machine, not the network, made."""
    out, tags, bounds = {}, {}, speed_bounds(metrics)
    for m in METRICS:
        if m.rule is None or metrics.get(m.name) is None or metrics.get(f"dense_{m.name}") is None:
            continue
        name = m.compared.removesuffix("_pct")
        try:
            value = m.rule(metrics[m.name], metrics[f"dense_{m.name}"], ticket, dense)
        except Absent as why:
            tags[f"{name}_absent"] = str(why)
            continue
        if m.speed and value is not None and bounds and not bounds[0] <= _as_speed(m, value) <= bounds[1]:
            tags[f"{name}_unreliable"] = (f"{value:.3g} means a speed ratio of {_as_speed(m, value):.2f}x, outside "
                                          f"[{bounds[0]:.2f}, {bounds[1]:.2f}]x, what a network with "
                                          f"{metrics['dense_flops'] / metrics['flops']:.2f}x fewer FLOPs can show "
                                          f"(within {SPEED_MARGIN:.0%})")
            continue
        out[m.compared] = value
    return out, tags


def console(metrics: dict, labels: dict[str, str] | None = None) -> str:
    """The costs part of a ticket's log line; ``labels``: names of metrics by what was measured
    (``ShiftedSets.labels``: regenerated corruptions are not CIFAR-10-C), else each row's own."""
    parts = []
    for m in METRICS:
        key = m.compared or m.name
        if m.console and metrics.get(key) is not None:
            value = -metrics[key] if key.endswith("reduction_pct") else metrics[key]
            parts.append(m.console.format(value, label=(labels or {}).get(m.name, m.label)))
    return ", ".join(parts) or "costs not measured"
