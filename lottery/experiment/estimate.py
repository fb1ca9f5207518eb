"""Where a sweep stands and what the rest will cost (``--dry-run``, and before every sweep).

Each trial is finished, failed, running or missing according to the MLflow runs carrying its
config key. A missing trial's cost is its training work (forward FLOPs per image x images x
epochs, the dense network's too when the store lacks it) divided by the training speed this
machine reached in finished runs of the experiment at the same precision, else in a few timed
steps; plus the median time finished tickets spent besides training (data, scoring, measuring).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf

from lottery import networks
from lottery.config import TrialConfig
from lottery.experiment import dense, fast_path
from lottery.experiment.design import derive
from lottery.files import content_key
from lottery.measure.costs import flops, throughput
from lottery.pruning.selection import select_blocks
from lottery.tracking import connection, liveness
from lottery.tracking.store import DenseStore
from lottery.training.data import shape_of, train_images
from lottery.training.devices import pick_device
from lottery.training.trainer import prepare

TIMED_STEPS = 5  # of the dense network, when no finished training tells the speed


@dataclass
class TrialState:
    cell: dict[str, str]
    seed: int
    status: str  # finished | failed | running | missing | n/a (the model cannot run it)
    note: str = ""  # the run id, or the failure's one-line error
    seconds: float | None = None  # estimated, for a missing trial
    metrics: dict[str, float] = field(default_factory=dict)  # a finished trial's (the seed plan reads its deltas)


@dataclass
class Speed:
    flop_s: float  # forward FLOPs x images trained per second
    overhead_s: float | None  # per ticket, besides training
    source: str


def survey(cells: list[tuple[dict, TrialConfig]], seeds: Sequence[int], experiment: str, precision: str | None,
           na: list[str | None]) -> list[TrialState]:
    """Every trial of the sweep (cell x seed: seeds 0..``seeds[i]``-1 of cell i) with its state in
    the experiment (``precision``: what ``amp`` resolves to on the workers' device; ``na``: why a
    cell cannot run on the model)."""
    out = []
    for (cell, cfg), why, count in zip(cells, na, seeds):
        for seed in range(count):
            if why:
                out.append(TrialState(cell, seed, "n/a", why))
                continue
            key = derive(with_seed(cfg, seed), worker_precision=precision).keys["config_key"]
            found = sorted(connection.find_runs(experiment, role="ticket", config_key=key),
                           key=lambda r: r.info.start_time, reverse=True)
            by = {r.info.status: r for r in reversed(found)}  # the newest run of each status
            if "FINISHED" in by:
                run = by["FINISHED"]
                out.append(TrialState(cell, seed, "finished", run.info.run_id, metrics=dict(run.data.metrics)))
            elif "RUNNING" in by and liveness.alive(by["RUNNING"].data.tags):
                out.append(TrialState(cell, seed, "running", by["RUNNING"].info.run_id))
            elif "RUNNING" in by:
                out.append(TrialState(cell, seed, "failed", "killed: left RUNNING by a process that is gone"))
            elif found:
                out.append(TrialState(cell, seed, "failed", found[0].data.tags.get("error", found[0].info.status)))
            else:
                out.append(TrialState(cell, seed, "missing"))
    return out


def with_seed(cfg: TrialConfig, seed: int) -> TrialConfig:
    c = cfg.copy()
    c.seed = seed
    return c


def measured_speed(experiment: str, store_root: str, amp: str) -> Speed | None:
    """The median training speed of the experiment's finished tickets and the store's dense
    networks at this precision, and the median time finished tickets spent besides training."""
    rates, overheads = _dense_rates(store_root, amp), []
    for r in connection.find_runs(experiment, role="ticket", amp=amp):
        m = r.data.metrics
        if r.info.status != "FINISHED" or not all(m.get(k) for k in ("train_images", "ticket_epochs", "train_seconds")):
            continue
        if not m.get("flops"):
            continue  # logged before every run measured its FLOPs
        rates.append(_rate(m, m["ticket_epochs"]))
        wall = (r.info.end_time - r.info.start_time) / 1000
        if wall >= m["train_seconds"]:  # runs logged before they were live have no real duration
            overheads.append(wall - m["train_seconds"])
    if not rates:
        return None
    return Speed(statistics.median(rates), statistics.median(overheads) if overheads else None,
                 f"median of {len(rates)} finished trainings (tickets in MLflow, dense networks in the store)")


def _dense_rates(store_root: str, amp: str) -> list[float]:
    rates = []
    for meta in DenseStore(store_root).metas():
        m, spec = meta["metrics"], meta["spec"]
        if spec.get("precision") == amp and all(m.get(k) for k in ("train_images", "train_seconds", "flops")):
            rates.append(_rate(m, m["epochs"]))
    return rates


def _rate(m: dict, epochs: int) -> float:
    """Forward FLOPs x images trained per second by a finished training."""
    return m["flops"] * m["train_images"] * epochs / m["train_seconds"]


def timed_speed(cfg: TrialConfig) -> Speed:
    """A few timed training steps of the dense network on this machine, on the first path its
    trials may take (the default where the config leaves it open: an estimate compiles only what
    the config compiles)."""
    device = pick_device(cfg.device)
    r = fast_path.candidates(cfg)[0].recipe(cfg)
    model = prepare(networks.build(cfg.model, shape_of(cfg.data)), device, r.train.channels_last)
    img_s = throughput(model, r, device, steps=TIMED_STEPS, warmup=2)
    return Speed(network_flops(cfg, 0) * img_s, None, f"{TIMED_STEPS} timed training steps (no finished training yet)")


_FLOPS: dict[str, int] = {}


def network_flops(cfg: TrialConfig, removed: int) -> int:
    """Forward FLOPs per image of the dense network with ``removed`` blocks gone (the first ones
    a stage can spare: in a CIFAR ResNet every removable block costs the same), counted on its
    skeleton; memoised per model, data shape and count."""
    shape = shape_of(cfg.data)
    key = content_key({"model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
                       "shape": [list(shape.input), shape.classes], "removed": removed})
    if key not in _FLOPS:
        net = networks.skeleton(cfg.model, shape)
        anatomy = networks.anatomy(net)
        gone = select_blocks(anatomy, torch.zeros(len(anatomy.removable)), removed)
        _FLOPS[key] = flops(networks.without(net, gone) if gone else net)
    return _FLOPS[key]


def estimate(states: list[TrialState], cells: list[tuple[dict, TrialConfig]], speed: Speed) -> int:
    """Fill in the seconds of each trial a sweep would run (failed or missing); returns how many
    dense networks they must train first."""
    cfgs = {tuple(cell.items()): cfg for cell, cfg in cells}
    dense_needed = set()
    for s in (s for s in states if s.status in ("failed", "missing")):
        design = derive(with_seed(cfgs[tuple(s.cell.items())], s.seed))
        cfg, images = design.cfg, train_images(design.cfg.data)
        # a filter ticket keeps the layer ticket's filter count: costed as that layer ticket
        start = design.mode.schedule_start(design.rewind)
        trainings = design.rounds if design.mode.retrains_in(design.rounds) else 1  # IMP
        work = network_flops(cfg, design.remove) * images * (cfg.train.epochs - start) * trainings
        _, key = dense.spec(cfg, design.precision)
        if key not in dense_needed and not DenseStore(cfg.store.root).path(key).exists():
            dense_needed.add(key)
            work += network_flops(cfg, 0) * images * cfg.train.epochs
        s.seconds = work / speed.flop_s + (speed.overhead_s or 0)
    return len(dense_needed)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def named(cell: dict[str, str]) -> str:
    """A cell as its swept values (``criterion=grasp density=1``)."""
    return " ".join(f"{k}={v}" for k, v in cell.items())


def render(name: str, profile: str, states: list[TrialState], speed: Speed | None, dense: int, jobs: int) -> str:
    """The sweep's trials one per line, the counts, and the estimate of what is missing."""
    counts = {k: sum(s.status == k for s in states) for k in ("finished", "failed", "running", "missing")}
    if any(s.status == "n/a" for s in states):
        counts["not applicable to the model"] = sum(s.status == "n/a" for s in states)
    lines = [f"{name} ({profile}): {len(states)} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    for s in states:
        cost = f"~{duration(s.seconds)}" if s.seconds is not None else ""
        lines.append(f"  {named(s.cell)} seed={s.seed}: {s.status:<8} {cost:<9} {s.note}".rstrip())
    todo = [s for s in states if s.seconds is not None]
    if todo and speed is not None:
        besides = (f"{duration(speed.overhead_s)} per ticket besides training" if speed.overhead_s is not None
                   else "time besides training unknown until a ticket finishes")
        lines.append(f"estimated time of the {len(todo)} trials to run, one at a time on this machine: "
                     f"{duration(sum(s.seconds for s in todo))} ({dense} dense network(s) to train first; speed "
                     f"{speed.flop_s / 1e12:.3f} TFLOP/s of forward work from the {speed.source}; {besides})"
                     + (f"; {jobs} at once share this machine" if jobs > 1 else ""))
    return "\n".join(lines)
