"""``make gpu-check``: every GPU check in one prepared run of at most 9 minutes on one GPU, one
JSON (``--json``, default ROOT/gpu-check.json) and a summary.

It runs the ``cuda``-marked tests; times a ticket with and without channels_last and the cost of
``train.deterministic``; 1, 2 and 4 trials sharing the device; trains two same-seed smoke trials
and compares their weights bit for bit; measures the step memory with 1 GiB of ballast resident;
times lottery's trainer eager / CUDA graph x fp32 / bf16, then compiled bf16 (the precision
tables train in on a GPU; ``make bench-gpu`` times compiled fp32); and projects Table 2's
GPU-minutes (one seed) from the path a Table 2 trial settles on (``fast_path.settle``, its compiles
cold) and one paper-profile epoch on it. Each budget is sized for a fresh box, its compiles
counted; checks that compile run last, and so do compiled modes within a check. A check starts
only if its budget fits what is left of the 9 minutes; one stopped at its budget, or failing,
keeps the parts it measured and names the rest ``not measured: <why>`` (``failed: <why>`` where it
measured nothing); each trainer mode is guarded on its own. ``--dry-run`` (``make gpu-check
DRY_RUN=1``) prints the plan on any machine. On a machine without CUDA it says so in one line and
exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu import concurrent_rate, epochs_for, trainer_rate, trainer_run  # noqa: E402
from lottery import networks  # noqa: E402
from lottery.config import CONF, choice, register  # noqa: E402
from lottery.errors import one_line  # noqa: E402
from lottery.experiment import fast_path  # noqa: E402
from lottery.experiment.fast_path import DEFAULT  # noqa: E402
from lottery.experiment.sweeps import load  # noqa: E402
from lottery.measure import costs  # noqa: E402
from lottery.networks.cifar_resnet import resnet  # noqa: E402
from lottery.training import compiling  # noqa: E402
from lottery.training.devices import configure, restored  # noqa: E402
from lottery.training.recipe import Recipe  # noqa: E402
from lottery.training.sources.cifar10 import CIFAR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAPER_EPOCHS, PAPER_IMAGES = 200, 50_000  # the paper profile: 200 epochs of CIFAR-10's training split
PAPER_EPOCH_STEPS = PAPER_IMAGES // 128  # one paper-profile epoch at batch 128
SHARED_SPAN_S = 5.0  # each sharing trial's timed span at one trial's rate (n trials: about n times it)
COLD_COMPILE_S = 60  # a cold inductor compile of a ResNet's training step, empty cache (30-90 s on a GPU)
CACHED_COMPILE_S = 20  # the same compile again, from the inductor cache


def guarded(fn):
    """A figure, or ``failed: <one line>``: one failed mode never loses the modes beside it."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return f"failed: {one_line(e)}"


def cuda_tests(out: dict) -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], cwd=REPO,
                       capture_output=True, text=True, timeout=STEPS["cuda_tests"].budget_s)
    out["exit"] = r.returncode
    out["summary"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]


# eager and CUDA graph first, compiled last: a compile that overruns loses only its own mode
MODES = {"eager_fp32": {"amp": "off"}, "eager_bf16": {"amp": "bf16"},
         "cuda_graph_fp32": {"amp": "off", "cuda_graph": True}, "cuda_graph_bf16": {"amp": "bf16", "cuda_graph": True},
         "compiled_bf16": {"amp": "bf16", "compile": True}}


def trainer_modes(steps: int, out: dict) -> None:
    """Each mode in its own guard; a mode whose fast path fell back (the trainer goes on eagerly,
    saying so) is reported as failed, not as an eager figure under its name."""
    for name, variant in MODES.items():
        out[name] = guarded(lambda: round(trainer_rate("cuda", 32, 128, steps, variant, strict=True), 1))


def ticket_memory_format(steps: int, out: dict) -> None:
    for cl in (True, False):  # ResNet20: ResNet32 less 12 blocks' worth of depth, as a deep ticket
        variant = {"amp": "bf16", "channels_last": cl}
        out[f"channels_last={cl}"] = round(trainer_rate("cuda", 20, 128, steps, variant), 1)


def deterministic_cost(steps: int, out: dict) -> None:
    for d, key in ((True, "deterministic_img_s"), (False, "autotuned_img_s")):
        out[key] = round(trainer_rate("cuda", 32, 128, steps, {"amp": "bf16", "deterministic": d}), 1)
    out["cost_pct"] = round(100 * (1 - out["deterministic_img_s"] / out["autotuned_img_s"]), 1)


def sharing(steps: int, out: dict) -> None:
    args = ("cuda", 32, 128, steps, {"amp": "bf16"})
    timed_epochs = epochs_for(SHARED_SPAN_S, trainer_rate(*args), steps, 128)
    for n in (1, 2, 4):
        found = concurrent_rate(n, args, timed_epochs)
        out[str(n)] = {"img_s": round(found.img_s, 1), "concurrent": round(found.overlap, 2)} if found else "failed"


def same_seed_smoke_trials(out: dict) -> None:
    """Two smoke trials of one config and seed, each in its own store: bit-equal weights?"""
    from hydra import compose, initialize_config_dir

    from lottery import load_ticket
    from lottery.experiment import trial

    register()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfgs = [compose(config_name="config", overrides=["profile=smoke", "data=synthetic", "device=cuda",
                                                         "criterion=grasp", "density=2", f"paths.root={tmp}/{i}",
                                                         "tracking.log_model=false", "train.channels_last=true",
                                                         "train.compile=false"]) for i in range(2)]  # one path
        outs = [trial.run(cfg) for cfg in cfgs]
        a, b = (load_ticket(o["run_id"], root=f"{tmp}/{i}").state_dict() for i, o in enumerate(outs))
        out["bit_equal"] = all(torch.equal(a[k], b[k]) for k in a)
        out["accuracies"] = [o["accuracy"] for o in outs]


def ballast(out: dict) -> None:
    device = torch.device("cuda")
    model = resnet(32, CIFAR).to(device).to(memory_format=torch.channels_last)
    r = Recipe.standalone(batch_size=128, **DEFAULT.settings)
    out["alone_bytes"], _ = costs.training_memory(model, r, device)
    extra = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    out["beside_1GiB_bytes"], _ = costs.training_memory(model, r, device)
    del extra
    out["moved_pct"] = round(100 * abs(out["beside_1GiB_bytes"] - out["alone_bytes"]) / out["alone_bytes"], 3)


def table2_trial(store: str):
    """A Table 2 trial's config at the paper profile (the sweep's overrides, its first cell), on
    synthetic images of CIFAR-10's shape and size (a path depends on those alone), in ``store``."""
    from hydra import compose, initialize_config_dir

    register()
    sweep = load("table2")
    cell = [f"{k}={v}" for k, v in sweep.cells()[0].items()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "profile=paper", *sweep.overrides, *cell, "data=synthetic", f"data.train_size={PAPER_IMAGES}",
            "device=cuda", f"store.root={store}", f"paths.root={store}"])


def cold_compile_s(store: Path) -> float:
    """The seconds of one compile as the settle measured it (its cache empty), 0 where it compiled nothing."""
    book = store / fast_path.FILE
    entries = json.loads(book.read_text()).values() if book.exists() else []
    return max((e.get("compile_s") or 0.0 for e in entries), default=0.0)


@contextlib.contextmanager
def empty_triton_cache(folder: str):
    """Triton's kernels cached in ``folder`` for the block (inductor pins TRITON_CACHE_DIR at its first
    compile, so swapping inductor's cache alone leaves the kernels warm), the variable put back after."""
    before = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = before


def table2_projection(out: dict) -> None:
    """Table 2 at one seed on the path its trials take: the settle a Table 2 trial runs (in an empty
    inductor cache, as on a fresh box), one paper-profile epoch of the dense ResNet32 on the path it
    chose (compiled from the settle's cache, as a sweep's dense network is), and from them the dense
    network and a ticket per cell, each of 200 epochs at its FLOPs' share of the dense network's
    rate, each paying its first epoch's overhead (a ticket, a new architecture: a cold compile on a
    compiled path), the settle once. The trials' measurements (costs, CKA, corruptions) are not in it."""
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp, temporary_cache_dir(f"{tmp}/inductor"), restored(), \
            empty_triton_cache(f"{tmp}/triton"):
        compiling.forget()  # trainer_img_s compiled this very ResNet32 step: the settle's compiles must be cold
        cfg = table2_trial(tmp)
        configure(device, cfg.train)
        began = time.perf_counter()
        settled = fast_path.settle(cfg, device)
        out["fast_path"], out["settle_seconds"] = settled.tag, round(time.perf_counter() - began, 1)
        out["cold_compile_seconds"] = round(cold_compile_s(Path(tmp)), 1)
        timed = trainer_run("cuda", 32, cfg.train.batch_size, PAPER_EPOCH_STEPS,
                            {"amp": choice(cfg.train.amp), "deterministic": cfg.train.deterministic,
                             **settled.path.settings})
    epoch_s = PAPER_IMAGES / timed.img_s
    out.update(epoch_seconds=round(epoch_s, 2), img_s=round(timed.img_s, 1), step=timed.path,
               first_epoch_overhead_seconds=round(timed.overhead_s, 1))
    dense = resnet(32, CIFAR)
    full, removable = costs.flops(dense), networks.anatomy(dense).removable
    cells = load("table2").cells()
    share = sum(costs.flops(networks.without(dense, [b.path for b in removable[:int(c["density"])]])) / full
                for c in cells)  # a cell's ticket removes `density` blocks
    per_ticket = out["cold_compile_seconds"] if settled.path.compile else timed.overhead_s
    seconds = (out["settle_seconds"] + timed.overhead_s + len(cells) * per_ticket
               + PAPER_EPOCHS * epoch_s * (1 + share))
    out["table2_gpu_minutes"] = round(seconds / 60, 1)
    out["counted"] = (f"the settle once, the dense network and {len(cells)} tickets of {PAPER_EPOCHS} epochs on "
                      f"{settled.path}, each with its first epoch's overhead (a ticket's: "
                      f"{'a cold compile' if settled.path.compile else 'as measured'}); not the trials' measurements")


@dataclass(frozen=True)
class Check:
    fn: Callable[[argparse.Namespace, dict], None]  # fills the dict part by part, as it measures them
    parts: tuple[str, ...]  # what it measures, in order (what a stopped check did not reach is named)
    work_s: int  # its budget beside its compiles, on a fresh box
    what: str
    cold: int = 0  # compiles it makes from an empty inductor cache
    cached: int = 0  # compiles it makes again from the cache its cold ones filled

    @property
    def budget_s(self) -> int:
        return self.work_s + self.cold * COLD_COMPILE_S + self.cached * CACHED_COMPILE_S

    @property
    def compiles(self) -> str:
        said = [f"{n} {kind} compile{'s' * (n > 1)} x {s} s" for n, kind, s in
                ((self.cold, "cold", COLD_COMPILE_S), (self.cached, "cached", CACHED_COMPILE_S)) if n]
        return " + ".join(said) or "no compile"


TRAINER_PARTS = tuple(MODES)
# The whole run fits TOTAL_S by construction: the budgets sum to no more, a check is stopped at its
# budget (SIGALRM), and one starts only if its budget fits what is left. Checks that compile run last.
STEPS = {
    "cuda_tests": Check(lambda a, o: cuda_tests(o), ("exit", "summary"), 40, "the cuda-marked tests (pytest -m cuda)"),
    "ticket_img_s": Check(lambda a, o: ticket_memory_format(a.steps, o), ("channels_last=True", "channels_last=False"),
                          20, "ResNet20 bf16 with and without channels_last"),
    "deterministic": Check(lambda a, o: deterministic_cost(a.steps, o),
                           ("deterministic_img_s", "autotuned_img_s", "cost_pct"), 20,
                           "the cost of train.deterministic"),
    "trials_sharing_the_device_img_s": Check(lambda a, o: sharing(a.steps, o), ("1", "2", "4"), 95,
                                             f"1, 2 and 4 trials at once (7 processes), each timed "
                                             f"~{SHARED_SPAN_S:.0f} s x n after a warm-up barrier"),
    "same_seed_smoke_trials": Check(lambda a, o: same_seed_smoke_trials(o), ("bit_equal", "accuracies"), 65,
                                    "two same-seed smoke trials (MLflow, codecarbon, CKA, corruptions) bit for bit"),
    "step_memory_with_1GiB_ballast": Check(lambda a, o: ballast(o), ("alone_bytes", "beside_1GiB_bytes", "moved_pct"),
                                           10, "step memory with 1 GiB resident beside it"),
    "trainer_img_s": Check(lambda a, o: trainer_modes(a.steps, o), TRAINER_PARTS, 50,
                           f"ResNet32 img/s, {', '.join(TRAINER_PARTS)} (compiled last), each guarded: a mode whose "
                           "compile or capture fails is 'failed: <why>' and the others stand", cold=1),
    "paper_epoch_and_table2": Check(lambda a, o: table2_projection(o),
                                    ("fast_path", "settle_seconds", "cold_compile_seconds", "epoch_seconds", "img_s",
                                     "step", "first_epoch_overhead_seconds", "table2_gpu_minutes", "counted"), 40,
                                    "Table 2's GPU-minutes on the path its trials take: a Table 2 trial's settle "
                                    "(both layouts compiled cold), one paper-profile epoch of ResNet32 on the settled "
                                    "path, settle and compiles counted", cold=2, cached=1),
}
TOTAL_S = 540


def plan() -> str:
    lines = [f"gpu-check plan: {len(STEPS)} checks in at most {TOTAL_S} s on one GPU, budgets for a fresh box (a "
             f"compile: {COLD_COMPILE_S} s cold, {CACHED_COMPILE_S} s from the cache). A check starts only if its "
             "budget fits what is left; one stopped at its budget or failing keeps what it measured and names the "
             "rest 'not measured: <why>' ('failed: <why>' where it measured nothing); the rest go on"]
    lines += [f"  {name:<32} <= {c.budget_s:>3} s  ({c.compiles})  {c.what}" for name, c in STEPS.items()]
    lines.append(f"  {'total of the budgets':<32}    {sum(c.budget_s for c in STEPS.values()):>3} s")
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


def measure(check: Check, args) -> dict | str:
    """What ``check`` measured within its budget; where it stopped early (its budget, an error),
    the parts it measured, the others named as not measured and why."""
    out: dict = {}
    try:
        within(check.budget_s, lambda: check.fn(args, out))
        return out
    except OverBudget as e:
        why = str(e)
    except Exception as e:  # noqa: BLE001 - one check's failure never stops the others
        why = f"failed: {one_line(e)}"
    if not out:
        return why if why.startswith("failed: ") else f"failed: {why}"
    return {**out, "not_measured": f"{', '.join(p for p in check.parts if p not in out)}: {why}"}


def run(args) -> dict:
    """Every check that fits what is left of TOTAL_S, each stopped at its budget keeping what it
    measured; what did not fit is 'skipped: ...'."""
    began, figures = time.perf_counter(), {}
    for name, check in STEPS.items():
        left = TOTAL_S - (time.perf_counter() - began)
        if check.budget_s > left:
            figures[name] = f"skipped: {left:.0f} s left of {TOTAL_S}, it needs {check.budget_s}"
        else:
            start = time.perf_counter()
            figures[name] = measure(check, args)
            figures[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {figures[name]}", flush=True)
    figures["seconds"] = round(time.perf_counter() - began, 1)
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=".lottery/gpu-check.json")
    p.add_argument("--steps", type=int, default=60, help="timed steps per trainer measurement")
    p.add_argument("--dry-run", action="store_true", help="print the plan (checks, budgets, compiles) and run nothing")
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
