"""Paper scale on one GPU: training rates of one trial, of trials sharing the device, and what
every paper table costs at the paper profile.

``make bench-gpu`` (``python benchmarks/gpu.py [--json PATH]``) measures, on the training
device, in a few minutes: images/s of one ResNet32 training step for eager / compiled (on CUDA:
CUDA graphs, ``mode="reduce-overhead"``) x fp32 / bf16, each on device-resident data with
channels_last; the aggregate images/s of 1, 2 and 4 processes training at once on the same
device (what ``JOBS=N`` does); and, from the best measured rate and each sweep's grid, the
projected GPU-hours of every paper table at the paper profile. The projection counts training
only (200 epochs of 50,000 images per dense network, ``200 - i`` epochs per rewound ticket), costs
a ticket at its dense network's rate (an upper bound: tickets are shallower), and scales rates to
other depths by their FLOPs. Figures are measured, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lottery.config import epoch_of  # noqa: E402
from lottery.measure import flops  # noqa: E402
from lottery.models.cifar_resnet import build, resnet_plan  # noqa: E402
from lottery.sweeps import available, load  # noqa: E402
from lottery.train import autocast, compiled, make_optimizer, prepare, synchronize  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402

PAPER_EPOCHS = 200
PAPER_TRAIN_IMAGES = 50_000  # the paper profile trains on the whole CIFAR-10 training split


def step_rate(device: str, depth: int, batch: int, amp: str, compile_: bool, steps: int, warmup: int,
              barrier=None) -> float:
    """Training images/s of one process: a compiled or eager step on device-resident data."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = prepare(build(resnet_plan(depth)), dev, True)
    t = TrainConfig(batch_size=batch, amp=amp)
    opt = make_optimizer(model, t)
    step_model = compiled(model, dev) if compile_ else model
    x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        with autocast(dev, amp):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    synchronize(dev)
    if barrier is not None:
        barrier.wait()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(dev)
    return steps * batch / (time.perf_counter() - began)


def _worker(args, barrier, queue):
    queue.put(step_rate(*args, barrier=barrier))


def concurrent_rate(n: int, args: tuple) -> float:
    """Aggregate images/s of ``n`` processes training at once (timed together after warm-up)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


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
        if sweep.experiment in seen:
            continue
        seen.add(sweep.experiment)
        tickets, dense = trainings(name, seeds)
        dense_runs = [(d, PAPER_EPOCHS) for d, _ in dense]
        per_table[name] = hours(tickets) + hours(dense_runs)
        all_tickets += hours(tickets)
        all_dense |= dense
    return per_table, all_tickets + hours([(d, PAPER_EPOCHS) for d, _ in all_dense])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (compilation, cudnn tuning)")
    p.add_argument("--concurrency", default="1,2,4", help="numbers of trials sharing the device")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell in the projection")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    began = time.perf_counter()
    rates = {}
    for compile_ in (False,) if args.no_compile else (False, True):
        for amp in ("off", "bf16"):
            name = f"{'compiled' if compile_ else 'eager'}_{'bf16' if amp == 'bf16' else 'fp32'}"
            rates[name] = step_rate(args.device, args.model, args.batch_size, amp, compile_, args.steps, args.warmup)
            print(f"one trial, {name:<14} {rates[name]:10.1f} img/s", flush=True)
    best = max(rates, key=rates.get)
    best_args = (args.device, args.model, args.batch_size, "bf16" if best.endswith("bf16") else "off",
                 best.startswith("compiled"), args.steps, args.warmup)
    shared = {}
    for n in (int(c) for c in args.concurrency.split(",")):
        shared[n] = concurrent_rate(n, best_args)
        print(f"{n} trials at once ({best}): {shared[n]:10.1f} img/s in all", flush=True)
    top = max(shared.values())
    base_flops = flops(build(resnet_plan(args.model)))
    depths = {32, 56, args.model}
    rate_at = {d: top * base_flops / flops(build(resnet_plan(d))) for d in depths}
    hours, total = projection(rate_at, args.seeds)
    for name, h in hours.items():
        print(f"{name:<14} {h:7.2f} GPU-hours at the paper profile ({args.seeds} seed(s))")
    print(f"all tables     {total:7.2f} GPU-hours (shared dense networks once); "
          f"measured in {time.perf_counter() - began:.0f} s")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    figures = {"device": device_name, "model": f"resnet{args.model}", "batch_size": args.batch_size,
               "one_trial_img_s": rates, "best": best, "concurrent_img_s": shared,
               "projection_rate_img_s": rate_at, "projected_gpu_hours": hours,
               "projected_gpu_hours_total": total, "seconds": time.perf_counter() - began}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
