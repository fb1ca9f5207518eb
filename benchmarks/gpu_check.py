"""``make gpu-check``: every GPU check in one prepared run of at most 8 minutes on one GPU, one
JSON (``--json``, default ROOT/gpu-check.json) and a summary.

It runs the ``cuda``-marked tests; times lottery's trainer eager / compiled / CUDA graph x fp32 /
bf16; a ticket with and without channels_last; the cost of ``train.deterministic``; 1, 2 and 4
trials sharing the device; trains two same-seed smoke trials and compares their weights bit for
bit; measures the step memory with 1 GiB of ballast resident; and times one paper-profile epoch
of the dense ResNet32 to project the GPU-minutes of Table 2 (one seed). On a machine without CUDA
it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu import concurrent_rate, trainer_rate  # noqa: E402
from lottery import networks  # noqa: E402
from lottery.config import TrainConfig  # noqa: E402
from lottery.measure import costs  # noqa: E402
from lottery.networks.cifar_resnet import resnet  # noqa: E402
from lottery.training.data import CIFAR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAPER_EPOCH_STEPS = 50_000 // 128  # one paper-profile epoch of CIFAR-10 at batch 128


def timed(figures: dict, name: str, fn):
    """Run one check, record its figure (or its error: one check never stops the others)."""
    began = time.perf_counter()
    try:
        figures[name] = fn()
    except Exception as e:  # noqa: BLE001
        figures[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    print(f"{name}: {figures[name]}  ({time.perf_counter() - began:.0f} s)", flush=True)


def cuda_tests() -> dict:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    return {"exit": r.returncode, "summary": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]}


def trainer_modes(steps: int) -> dict:
    out = {}
    for mode, extra in (("eager", {}), ("compiled", {"compile": True}), ("cuda_graph", {"cuda_graph": True})):
        for name, amp in (("fp32", "off"), ("bf16", "bf16")):
            out[f"{mode}_{name}"] = round(trainer_rate("cuda", 32, 128, steps, {"amp": amp, **extra}), 1)
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
    return {str(n): (round(r, 1) if (r := concurrent_rate(n, args)) else "failed") for n in (1, 2, 4)}


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
                                                         "tracking.log_model=false"]) for i in range(2)]
        outs = [trial.run(cfg) for cfg in cfgs]
        a, b = (load_ticket(o["run_id"], root=f"{tmp}/{i}").state_dict() for i, o in enumerate(outs))
        return {"bit_equal": all(torch.equal(a[k], b[k]) for k in a), "accuracies": [o["accuracy"] for o in outs]}


def ballast() -> dict:
    device = torch.device("cuda")
    model = resnet(32, CIFAR).to(device).to(memory_format=torch.channels_last)
    t = TrainConfig(batch_size=128)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=".lottery/gpu-check.json")
    p.add_argument("--steps", type=int, default=60, help="timed steps per trainer measurement")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; run `make gpu-check` on a GPU host (nothing checked here)")
        return 0
    began, figures = time.perf_counter(), {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    timed(figures, "cuda_tests", cuda_tests)
    timed(figures, "trainer_img_s", lambda: trainer_modes(args.steps))
    timed(figures, "ticket_img_s", lambda: ticket_memory_format(args.steps))
    timed(figures, "deterministic", lambda: deterministic_cost(args.steps))
    timed(figures, "trials_sharing_the_device_img_s", lambda: sharing(args.steps))
    timed(figures, "same_seed_smoke_trials", same_seed_smoke_trials)
    timed(figures, "step_memory_with_1GiB_ballast", ballast)
    timed(figures, "paper_epoch_and_table2", table2_projection)
    figures["seconds"] = round(time.perf_counter() - began, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"gpu-check: {figures['seconds']} s on {figures['device']}; figures in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
