"""Accuracy parity of mixed precision: the quick profile's dense network, fp32 against amp=auto.

``make bench-amp [DATA=imagefolder DATA_ROOT=DIR] [SEEDS=3]`` trains the dense reference of the
quick profile (same data, recipe and seeds) once per seed with ``train.amp=off`` and once with
``train.amp=auto``, and prints mean ± std test accuracy and seconds per epoch of each. bf16 is
trusted when its mean lies within the fp32 runs' spread; this is measured here, never asserted
in a test. Usage: ``python benchmarks/amp.py [hydra overrides] [--seeds N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lottery import networks  # noqa: E402
from lottery.config import CONF, register  # noqa: E402
from lottery.experiment import fast_path  # noqa: E402
from lottery.experiment.design import validate  # noqa: E402
from lottery.training.data import load_dataset  # noqa: E402
from lottery.training.devices import configure, pick_device, precision, restored  # noqa: E402
from lottery.training.recipe import Recipe  # noqa: E402
from lottery.training.trainer import Job, evaluate, prepare, train  # noqa: E402


def compose_quick(overrides: list[str], amp: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["profile=quick", "mode=dense", *overrides,
                                                       f"train.amp={amp}", "train.progress=false"])
    validate(cfg)
    return cfg


def one_run(cfg, data, device, seed: int) -> tuple[float, float]:
    """(test accuracy %, training seconds per epoch) of one dense training, configured as a trial
    configures it."""
    configure(device, cfg.train)
    torch.manual_seed(seed)
    model = prepare(networks.build(cfg.model, data.shape), device, cfg.train.channels_last)
    done = train(model, data, Job(Recipe.of(cfg), seed, device, desc=f"{cfg.train.amp.value} s{seed}"))
    return evaluate(model, data, cfg.train, device), done.seconds / cfg.train.epochs


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="hydra overrides, e.g. data=imagefolder data.root=DIR")
    args = p.parse_intermixed_args(argv)
    register()
    results = {}
    data = None
    auto = compose_quick(args.overrides, "auto")
    device = pick_device(auto.device)
    with restored():
        configure(device, auto.train)
        path = fast_path.settle(auto, device)  # both precisions on the path a trial takes: precision alone differs
    for amp in ("off", "auto"):
        cfg = path.config(compose_quick(args.overrides, amp))
        data = data or load_dataset(cfg.data, device)
        runs = [one_run(cfg, data, device, seed) for seed in range(args.seeds)]
        results[amp] = {"dtype": precision(device, amp), "accuracy": summary([a for a, _ in runs]),
                        "seconds_per_epoch": summary([s for _, s in runs])}
    off, auto = results["off"], results["auto"]
    spread = (min(off["accuracy"]["values"]), max(off["accuracy"]["values"]))
    results["auto_within_fp32_spread"] = spread[0] <= auto["accuracy"]["mean"] <= spread[1]
    results["accuracy_difference_pp"] = auto["accuracy"]["mean"] - off["accuracy"]["mean"]
    results["epoch_speedup"] = off["seconds_per_epoch"]["mean"] / auto["seconds_per_epoch"]["mean"]
    print(f"quick profile dense ResNet{cfg.model.depth}, {len(data.train)} training / {len(data.test)} test images, "
          f"{cfg.train.epochs} epochs, {args.seeds} seeds, {torch.get_num_threads()} threads on {device}")
    for amp, r in (("off", off), ("auto", auto)):
        a, s = r["accuracy"], r["seconds_per_epoch"]
        print(f"  amp={amp:<4} ({r['dtype']}): accuracy {a['mean']:6.2f} ± {a['std']:.2f} % "
              f"[{', '.join(f'{v:.2f}' for v in a['values'])}] | {s['mean']:6.1f} ± {s['std']:.1f} s/epoch")
    print(f"  auto - off: {results['accuracy_difference_pp']:+.2f} pp "
          f"({'within' if results['auto_within_fp32_spread'] else 'outside'} the fp32 runs' range "
          f"{spread[0]:.2f}..{spread[1]:.2f}); {results['epoch_speedup']:.2f}x faster per epoch")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
