"""Paper scale on one GPU: the trainer's rate, of one trial and of trials sharing the device, and
what every paper table costs at the paper profile.

``make bench-gpu`` (``python benchmarks/gpu.py [--json PATH]``) times lottery's own trainer
(``lottery.training.trainer.train``: device-resident data, batched augmentation, the recipe's optimizer) on
the device ``pick_device`` gives, in a few minutes: images/s of one ResNet32 trial for eager /
compiled (/ a captured CUDA graph, on CUDA) x fp32 / bf16; the aggregate images/s of 1, 2 and 4
processes training at once on the same device (what ``JOBS=N`` does; a worker that fails or
dies stops the others at once and is reported in one line, never waited for); and, from the measured rates, the projected GPU-hours of every
paper table at the paper profile, at the rate ``make table2`` runs by default (eager, one trial
at a time) and at the best one measured. The projection counts training only (200 epochs of
50,000 images per dense network, ``200 - i`` epochs per rewound ticket), costs a ticket at its
dense network's rate (an upper bound: tickets are shallower), and scales rates to other depths
by their FLOPs. Figures are measured, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import queue as queues
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lottery.errors import one_line  # noqa: E402
from lottery.experiment.fast_path import DEFAULT  # noqa: E402
from lottery.experiment.sweeps import available, load  # noqa: E402
from lottery.measure.costs import flops  # noqa: E402
from lottery.networks.cifar_resnet import resnet  # noqa: E402
from lottery.training.data import load_dataset  # noqa: E402
from lottery.training.sources.base import SOURCES  # noqa: E402
from lottery.training.sources.cifar10 import CIFAR  # noqa: E402
from lottery.training.devices import configure, pick_device  # noqa: E402
from lottery.training.recipe import Recipe  # noqa: E402
from lottery.training.trainer import Job, epoch_of, prepare, train  # noqa: E402

PAPER_EPOCHS = 200
PAPER_TRAIN_IMAGES = 50_000  # the paper profile trains on the whole CIFAR-10 training split
WORKER_TIMEOUT_S = 600  # a worker alive but silent this long is hung
POLL_S = 1.0  # how often the workers' exit codes are read while their figures are awaited


@dataclass
class Timed:
    """A trainer measurement: images/s over the timed epochs, and when they ran (wall clock)."""

    img_s: float
    began: float
    ended: float
    path: str  # the step that ran (Trained.compiled): no, stayed, graph, fallback: ...
    overhead_s: float = 0.0  # the training's seconds beyond its epochs at the timed rate: compile, capture, autotuning


def trainer_run(device: str, depth: int, batch: int, steps: int, variant: dict, timed_epochs: int = 1,
                warmed=None) -> Timed:
    """lottery's trainer over ``timed_epochs`` epochs of ``steps`` batches, after a first epoch that
    warms up (compilation, graph capture, cuDNN); ``warmed()`` is called between the two (where
    concurrent workers wait for each other); ``variant``: recipe keys (amp, compile, cuda_graph,
    channels_last, deterministic), configured as a trial configures them."""
    dev = pick_device(device)
    synthetic = SOURCES.settings_of("synthetic")(name="synthetic", train_size=steps * batch, test_size=100)
    data = load_dataset(OmegaConf.structured(synthetic), dev)
    r = Recipe.standalone(epochs=1 + timed_epochs, milestones=[], batch_size=batch, progress=False,
                          **{**DEFAULT.settings, **variant})
    configure(dev, r.train)
    torch.manual_seed(0)
    model = prepare(resnet(depth, CIFAR), dev, r.train.channels_last)
    marks = []

    def on_epoch(line: dict) -> None:
        if line["epoch"] == 1 and warmed is not None:
            warmed()
        marks.append(time.time())

    began = time.perf_counter()
    done = train(model, data, Job(r, 0, dev, on_epoch=on_epoch))
    wall = time.perf_counter() - began  # (however the trainer books its compile)
    seconds = sum(h["epoch_seconds"] for h in done.history[1:])
    return Timed(timed_epochs * steps * batch / seconds, marks[0], marks[-1], done.compiled,
                 max(0.0, wall - (1 + timed_epochs) * seconds / timed_epochs))


def trainer_rate(device: str, depth: int, batch: int, steps: int, variant: dict, strict: bool = False) -> float:
    """Training images/s of lottery's trainer over one timed epoch of ``steps`` batches (``trainer_run``);
    ``strict``: an error if the variant's fast path fell back to the eager step."""
    timed = trainer_run(device, depth, batch, steps, variant)
    if strict and timed.path.startswith("fallback"):
        raise RuntimeError(timed.path)
    return timed.img_s


def _worker(args, barrier, queue):
    """One trial sharing the device: its timing on the queue, or why it failed (one line)."""
    try:
        timed = trainer_run(*args, warmed=barrier.wait)  # timed only once every worker is warm
    except Exception as e:  # noqa: BLE001 - the parent stops the others and says why
        queue.put(one_line(e))
        return
    queue.put((timed.img_s, timed.began, timed.ended))


def collect(procs, queue, n: int) -> list[tuple] | str:
    """The ``n`` workers' timings, or why they will not all come: a worker that failed, one that
    died (its exit code, read every ``POLL_S``), or one silent for ``WORKER_TIMEOUT_S``. A worker
    lost before the barrier leaves the others waiting there for ever: never wait on them."""
    out, deadline = [], time.monotonic() + WORKER_TIMEOUT_S
    while len(out) < n:
        try:
            got = queue.get(timeout=POLL_S)
        except queues.Empty:
            died = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if died:
                return f"a worker died (exit code {died[0]})"
            if time.monotonic() > deadline:
                return f"a worker hung ({WORKER_TIMEOUT_S} s without a figure)"
            continue
        if isinstance(got, str):
            return f"a worker failed: {got}"
        out.append(got)
        deadline = time.monotonic() + WORKER_TIMEOUT_S  # silent for that long since the last figure: hung
    return out


@dataclass
class Shared:
    """``n`` trials training at once: their summed images/s, and how much of the timed spans overlapped."""

    img_s: float
    overlap: float  # the span all of them trained at once over the mean timed span (1: fully concurrent)


def concurrent_rate(n: int, args: tuple, timed_epochs: int) -> Shared | None:
    """Aggregate images/s of ``n`` processes training at once, timed after all have started CUDA,
    made their data and warmed up (a barrier), over ``timed_epochs`` epochs each (long enough that
    start-up jitter does not shorten the shared span); None, said in one line, if one fails or dies."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=((*args, timed_epochs), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    out: list[tuple] | str = "stopped before every worker reported"
    try:
        out = collect(procs, queue, n)
    finally:  # every worker that reported is ending; any other (waiting at the barrier, hung, a budget past) is killed
        for p in procs:
            p.join(timeout=0 if isinstance(out, str) else 10)
            if p.is_alive():
                p.kill()
    if isinstance(out, str):
        print(f"{n} trials at once: {out}; the others were stopped", flush=True)
        return None
    spans = [ended - began for _, began, ended in out]
    together = min(e for _, _, e in out) - max(b for _, b, _ in out)
    return Shared(sum(rate for rate, _, _ in out), max(0.0, together) / (sum(spans) / n))


def epochs_for(seconds: float, img_s: float, steps: int, batch: int) -> int:
    """Timed epochs of ``steps`` batches that last about ``seconds`` at ``img_s``."""
    return max(1, math.ceil(seconds * img_s / (steps * batch)))


def trainings(sweep_name: str, seeds: int) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
    """(depth, epochs) of every ticket a sweep trains at the paper profile, and the (depth, seed)
    of the dense networks they share (each trained once, whichever sweep needs it first)."""
    sweep = load(sweep_name)
    out, dense = [], set()
    for cell in sweep.cells():
        keys = dict(o.split("=", 1) for o in sweep.overrides)
        keys.update(cell)
        depth = int(keys.get("model", "resnet32").removeprefix("resnet"))
        mode = keys.get("mode", "init")
        rewind = epoch_of(float(keys.get("rewind_epoch", 0)), PAPER_EPOCHS) if "rewind" in mode else 0
        for seed in range(seeds):
            out.append((depth, PAPER_EPOCHS - rewind))
            dense.add((depth, seed))
    return out, dense


def projection(rate_at_depth: dict[int, float], seeds: int = 1) -> tuple[dict[str, float], float]:
    """GPU-hours of each paper table's sweep run alone (its dense networks included; tables
    sharing an experiment counted once), and of all of them together (dense networks once)."""

    def hours(runs) -> float:
        return sum(e * PAPER_TRAIN_IMAGES / rate_at_depth[d] for d, e in runs) / 3600

    per_table, seen, all_dense, all_tickets = {}, set(), set(), 0.0
    for name in available():
        sweep = load(name)
        if sweep.experiment in seen or sweep.kind == "beyond":
            continue  # the same runs as another table, or not a paper table
        seen.add(sweep.experiment)
        tickets, dense = trainings(name, seeds)
        dense_runs = [(d, PAPER_EPOCHS) for d, _ in dense]
        per_table[name] = hours(tickets) + hours(dense_runs)
        all_tickets += hours(tickets)
        all_dense |= dense
    return per_table, all_tickets + hours([(d, PAPER_EPOCHS) for d, _ in all_dense])


def variants(device: str, compile_: bool) -> dict[str, dict]:
    amps = {"fp32": "off", "bf16": "bf16"}
    modes = {"eager": {}, **({"compiled": {"compile": True}} if compile_ else {}),
             **({"cuda_graph": {"cuda_graph": True}} if pick_device(device).type == "cuda" else {})}
    return {f"{m}_{a}": {"amp": amp, **extra} for m, extra in modes.items() for a, amp in amps.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement (after one warm-up epoch)")
    p.add_argument("--concurrency", default="1,2,4", help="numbers of trials sharing the device")
    p.add_argument("--shared-seconds", type=float, default=20.0,
                   help="timed span of each trial sharing the device (at one trial's rate; longer when shared)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell in the projection")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    began = time.perf_counter()
    rates = {}
    for name, variant in variants(args.device, not args.no_compile).items():
        rates[name] = trainer_rate(args.device, args.model, args.batch_size, args.steps, variant)
        print(f"one trial, {name:<16} {rates[name]:10.1f} img/s", flush=True)
    best = max(rates, key=rates.get)
    best_args = (args.device, args.model, args.batch_size, args.steps, variants(args.device, True)[best])
    shared = {}
    timed_epochs = epochs_for(args.shared_seconds, rates[best], args.steps, args.batch_size)
    for n in (int(c) for c in args.concurrency.split(",")):
        found = concurrent_rate(n, best_args, timed_epochs)
        shared[n] = found.img_s if found else None
        print(f"{n} trials at once ({best}): " + (f"{found.img_s:10.1f} img/s in all, timed spans {100 * found.overlap:.0f}% "
                                                  "concurrent" if found else "failed"), flush=True)
    base_flops = flops(resnet(args.model, CIFAR))
    default = "eager_bf16" if "eager_bf16" in rates else best  # what make table2 runs: amp=auto, eager, one trial
    projected = {}
    for label, rate in (("default", rates[default]), ("best", max(v for v in (*rates.values(), *shared.values())
                                                                   if v))):
        rate_at = {d: rate * base_flops / flops(resnet(d, CIFAR)) for d in {32, 56, args.model}}
        projected[label] = projection(rate_at, args.seeds)
    for name, h in projected["default"][0].items():
        print(f"{name:<14} {h:7.2f} GPU-hours at the paper profile as make {name} runs it ({args.seeds} seed(s)); "
              f"{projected['best'][0][name]:.2f} at the best measured rate")
    print(f"all tables     {projected['default'][1]:7.2f} GPU-hours (shared dense networks once); measured in "
          f"{time.perf_counter() - began:.0f} s")
    device_name = torch.cuda.get_device_name() if pick_device(args.device).type == "cuda" else "cpu"
    figures = {"device": device_name, "model": f"resnet{args.model}", "batch_size": args.batch_size,
               "one_trial_img_s": rates, "best": best, "concurrent_img_s": shared,
               "projected_gpu_hours": projected["default"][0], "projected_gpu_hours_total": projected["default"][1],
               "projected_gpu_hours_best": projected["best"][0], "seconds": time.perf_counter() - began}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
