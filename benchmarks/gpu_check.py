"""``make gpu-check``: every GPU check in one prepared run of at most 8 minutes on one GPU, one
JSON (``--json``, default ROOT/gpu-check.json) and a summary.

It runs the ``cuda``-marked tests; times lottery's trainer eager / compiled / CUDA graph x fp32 /
bf16; a ticket with and without channels_last; the cost of ``train.deterministic``; 1, 2 and 4
trials sharing the device; trains two same-seed smoke trials and compares their weights bit for
bit; measures the step memory with 1 GiB of ballast resident; and times one paper-profile epoch
of the dense ResNet32 to project the GPU-minutes of Table 2 (one seed). Each check has a budget
and starts only if it fits what is left of the 8 minutes; each is guarded (a failure is recorded
as ``failed: <why>``, and so is each trainer mode on its own). ``--dry-run`` (``make gpu-check
DRY_RUN=1``) prints the plan on any machine. On a machine without CUDA it says so in one line and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu import concurrent_rate, epochs_for, trainer_rate  # noqa: E402
from lottery import networks  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.errors import one_line  # noqa: E402
from lottery.experiment.fast_path import DEFAULT  # noqa: E402
from lottery.measure import costs  # noqa: E402
from lottery.networks.cifar_resnet import resnet  # noqa: E402
from lottery.training.sources.cifar10 import CIFAR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAPER_EPOCH_STEPS = 50_000 // 128  # one paper-profile epoch of CIFAR-10 at batch 128


def guarded(fn):
    """A figure, or ``failed: <one line>``: one failure never loses the figures beside it."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return f"failed: {one_line(e)}"


def cuda_tests() -> dict:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], cwd=REPO,
                       capture_output=True, text=True, timeout=STEPS["cuda_tests"].budget_s)
    return {"exit": r.returncode, "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]}


MODES = {"eager": {}, "compiled": {"compile": True}, "cuda_graph": {"cuda_graph": True}}


def trainer_modes(steps: int) -> dict:
    """Each mode x precision in its own guard; a mode whose fast path fell back (the trainer goes on
    eagerly, saying so) is reported as failed, not as an eager figure under its name."""
    out = {}
    for mode, extra in MODES.items():
        for name, amp in (("fp32", "off"), ("bf16", "bf16")):
            out[f"{mode}_{name}"] = guarded(lambda: round(trainer_rate("cuda", 32, 128, steps, {"amp": amp, **extra},
                                                                       strict=True), 1))
    return out


def ticket_memory_format(steps: int) -> dict:
    return {f"channels_last={cl}": round(trainer_rate("cuda", 20, 128, steps, {"amp": "bf16", "channels_last": cl}), 1)
            for cl in (True, False)}  # ResNet20: ResNet32 less 12 blocks' worth of depth, as a deep ticket


def deterministic_cost(steps: int) -> dict:
    rates = {d: trainer_rate("cuda", 32, 128, steps, {"amp": "bf16", "deterministic": d}) for d in (True, False)}
    return {"deterministic_img_s": round(rates[True], 1), "autotuned_img_s": round(rates[False], 1),
            "cost_pct": round(100 * (1 - rates[True] / rates[False]), 1)}


def sharing(steps: int) -> dict:
    args = ("cuda", 32, 128, steps, {"amp": "bf16"})
    timed_epochs = epochs_for(10.0, trainer_rate(*args), steps, 128)  # ~10 s timed per trial
    out = {}
    for n in (1, 2, 4):
        found = concurrent_rate(n, args, timed_epochs)
        out[str(n)] = {"img_s": round(found.img_s, 1), "concurrent": round(found.overlap, 2)} if found else "failed"
    return out


def same_seed_smoke_trials() -> dict:
    """Two smoke trials of one config and seed, each in its own store: bit-equal weights?"""
    from hydra import compose, initialize_config_dir

    from lottery import load_ticket
    from lottery.config import register
    from lottery.experiment import trial

    register()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfgs = [compose(config_name="config", overrides=["profile=smoke", "data=synthetic", "device=cuda",
                                                         "criterion=grasp", "density=2", f"paths.root={tmp}/{i}",
                                                         "tracking.log_model=false", "train.channels_last=true",
                                                         "train.compile=false"]) for i in range(2)]  # one path
        outs = [trial.run(cfg) for cfg in cfgs]
        a, b = (load_ticket(o["run_id"], root=f"{tmp}/{i}").state_dict() for i, o in enumerate(outs))
        return {"bit_equal": all(torch.equal(a[k], b[k]) for k in a), "accuracies": [o["accuracy"] for o in outs]}


def ballast() -> dict:
    device = torch.device("cuda")
    model = resnet(32, CIFAR).to(device).to(memory_format=torch.channels_last)
    t = TrainConfig(batch_size=128, **DEFAULT.settings)
    alone, _ = costs.training_memory(model, t, device)
    extra = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    beside, _ = costs.training_memory(model, t, device)
    del extra
    return {"alone_bytes": alone, "beside_1GiB_bytes": beside, "moved_pct": round(100 * abs(beside - alone) / alone, 3)}


def table2_projection() -> dict:
    """One paper-profile epoch of the dense ResNet32 (50,000 images at batch 128, amp=auto as
    make table2 runs it), and Table 2 at one seed from it: the dense network and ten tickets of
    200 epochs each, every ticket costed at its FLOPs' share of the dense network's."""
    rate = trainer_rate("cuda", 32, 128, PAPER_EPOCH_STEPS, {"amp": "auto"})
    epoch_s = 50_000 / rate
    dense = resnet(32, CIFAR)
    full = costs.flops(dense)
    anatomy = networks.anatomy(dense)
    share = sum(costs.flops(networks.without(dense, [b.path for b in anatomy.removable[:p]])) / full
                for p in (1, 2, 3, 4, 5)) * 2  # SNIP and GraSP remove p blocks each
    return {"epoch_seconds": round(epoch_s, 2), "img_s": round(rate, 1),
            "table2_gpu_minutes": round(200 * epoch_s * (1 + share) / 60, 1)}


@dataclass(frozen=True)
class Check:
    fn: Callable[[argparse.Namespace], object]
    budget_s: int  # what it may take on one GPU; a check that would overrun the total is skipped
    what: str


# The whole run fits TOTAL_S by construction: the budgets sum to less, a check is stopped at its
# budget (SIGALRM), and one starts only if its budget fits what is left.
STEPS = {
    "cuda_tests": Check(lambda a: cuda_tests(), 100, "the cuda-marked tests (pytest -m cuda)"),
    "trainer_img_s": Check(lambda a: trainer_modes(a.steps), 140,
                           "ResNet32 img/s, eager / compiled / CUDA graph x fp32 / bf16, each guarded: a mode whose "
                           "compile or capture fails is 'failed: <why>' and the others stand"),
    "ticket_img_s": Check(lambda a: ticket_memory_format(a.steps), 25, "ResNet20 bf16 with and without channels_last"),
    "deterministic": Check(lambda a: deterministic_cost(a.steps), 25, "the cost of train.deterministic"),
    "trials_sharing_the_device_img_s": Check(lambda a: sharing(a.steps), 90,
                                             "1, 2 and 4 trials at once, timed together after a warm-up barrier"),
    "same_seed_smoke_trials": Check(lambda a: same_seed_smoke_trials(), 50, "two same-seed smoke trials bit for bit"),
    "step_memory_with_1GiB_ballast": Check(lambda a: ballast(), 10, "step memory with 1 GiB resident beside it"),
    "paper_epoch_and_table2": Check(lambda a: table2_projection(), 25,
                                    "one paper-profile epoch of ResNet32 and Table 2's GPU-minutes"),
}
TOTAL_S = 480


def plan() -> str:
    lines = [f"gpu-check plan: {len(STEPS)} checks in at most {TOTAL_S} s on one GPU (a check starts only if its "
             "budget fits what is left; each failure is recorded as 'failed: <why>' and the rest go on)"]
    lines += [f"  {name:<34} <= {c.budget_s:>3} s  {c.what}" for name, c in STEPS.items()]
    lines.append(f"  {'total of the budgets':<34}    {sum(c.budget_s for c in STEPS.values()):>3} s")
    return "\n".join(lines)


class OverBudget(BaseException):
    """A check past its budget (a BaseException: no guard inside the check swallows it)."""


def within(budget_s: int, fn):
    """``fn()``, stopped with ``OverBudget`` after ``budget_s`` seconds."""

    def expire(signum, frame):
        raise OverBudget(f"stopped at its {budget_s} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(budget_s)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(args) -> dict:
    """Every check that fits what is left of TOTAL_S, each guarded and stopped at its budget;
    what did not fit is 'skipped: ...'."""
    began, figures = time.perf_counter(), {}
    for name, check in STEPS.items():
        left = TOTAL_S - (time.perf_counter() - began)
        if check.budget_s > left:
            figures[name] = f"skipped: {left:.0f} s left of {TOTAL_S}, it needs {check.budget_s}"
        else:
            start = time.perf_counter()
            try:
                figures[name] = within(check.budget_s, lambda: guarded(lambda: check.fn(args)))
            except OverBudget as e:
                figures[name] = f"failed: {e}"
            figures[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {figures[name]}", flush=True)
    figures["seconds"] = round(time.perf_counter() - began, 1)
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=".lottery/gpu-check.json")
    p.add_argument("--steps", type=int, default=60, help="timed steps per trainer measurement")
    p.add_argument("--dry-run", action="store_true", help="print the plan (checks, budgets, fallbacks) and run nothing")
    args = p.parse_args(argv)
    if args.dry_run:
        print(plan())
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; run `make gpu-check` on a GPU host (nothing checked here)")
        return 0
    print(plan(), flush=True)
    figures = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, **run(args)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"gpu-check: {figures['seconds']} s on {figures['device']}; figures in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
