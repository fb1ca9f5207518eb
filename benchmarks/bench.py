"""lottery's performance against the loop a researcher would write by hand, in one run.

(a) training throughput of lottery's trainer, at the default precision (``amp=auto``: bf16 where
the device has it) and at fp32, both on the fast path a paper-profile trial settles on here
(layout and compile, timed as ``lottery.experiment.fast_path`` times them), vs a plain fp32
PyTorch loop (PIL transforms, DataLoader with workers, standard step; TF32 off, as the trainer
has it), same device, model,
batch, optimizer and images; (b) achieved training
FLOP/s as a fraction of the device's peak in the dtype actually used (the better of a large matmul
and a large convolution), measured in the same run; (c) scoring
time of every criterion on ResNet56 with its default scoring set; (d) MLflow + codecarbon time
per trial against the trial's own time. The rates of (a) are taken in rounds, every variant once
per round, and each ratio is the median of its rounds' ratios: on a shared host whose speed drifts,
rates timed minutes apart are not comparable. Figures are never asserted in tests.
Usage: ``python benchmarks/bench.py [--json PATH] [--model 32] ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lottery.config import CONF, DataConfig, MeasureConfig, TrackingConfig, register  # noqa: E402
from lottery.errors import LotteryError  # noqa: E402
from lottery.experiment import fast_path  # noqa: E402
from lottery.experiment.fast_path import DEFAULT, FastPath  # noqa: E402
from lottery.measure import carbon  # noqa: E402
from lottery.networks.cifar_resnet import resnet  # noqa: E402
from lottery.pruning.criteria import CRITERIA, ScoringSet, score_blocks  # noqa: E402
from lottery.tracking import connection, runs  # noqa: E402
from lottery.training.batches import scoring_set  # noqa: E402
from lottery.training.data import load_dataset  # noqa: E402
from lottery.training.sources.base import SOURCES  # noqa: E402
from lottery.training.sources.cifar10 import CIFAR  # noqa: E402
from lottery.training.devices import configure, precision, restored, synchronize  # noqa: E402
from lottery.training.recipe import Recipe  # noqa: E402
from lottery.training.trainer import Job, prepare, train  # noqa: E402


def data_config(args, n_train: int) -> DataConfig:
    cache = str(Path(args.root) / "cache")
    if args.data == "synthetic":
        return synthetic(n_train, cache=cache)
    return OmegaConf.structured(SOURCES.settings_of("imagefolder")(name="imagefolder", root=args.data,
                                                                   train_size=n_train, test_size=100, cache=cache))


def synthetic(n_train: int, **more) -> DataConfig:
    return OmegaConf.structured(SOURCES.settings_of("synthetic")(name="synthetic", train_size=n_train, test_size=100,
                                                                 **more))


def recipe(args, amp: str = "off", **variant) -> Recipe:
    """The trainer's recipe (the paper's SGD) for one timed epoch after one that warms up (as a
    trial trains: deterministic, eager and channels_last unless the variant says otherwise)."""
    return Recipe.standalone(epochs=2, milestones=[], batch_size=args.batch_size, progress=False, amp=amp,
                             **{**DEFAULT.settings, **variant})


def settled_path(args, device) -> tuple[fast_path.Settled, list[FastPath]]:
    """The path a paper-profile trial of this ResNet takes on this device (200 epochs of 50,000
    images: long enough to try compiling), timed in a store of its own, and the paths it chose from."""
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "profile=paper", "model=resnet20", f"model.depth={args.model}", "data=synthetic", "data.train_size=50000",
            f"train.batch_size={args.batch_size}", f"train.amp={args.amp}",
            f"train.compile_backend={args.compile_backend}", f"store.root={tmp}", f"paths.root={tmp}"])
        with restored():
            configure(device, cfg.train)
            return fast_path.settle(cfg, device), fast_path.candidates(cfg)


def trainer_rate(args, data, device, amp: str, repeat: int, **variant) -> float:
    """Images/s of lottery.training.trainer.train over its second epoch of ``steps`` batches on a
    fresh network (the first epoch warms it up), configured as a trial configures it
    (``devices.configure``), the global settings put back afterwards."""
    r = recipe(args, amp, **variant)
    with restored():
        configure(device, r.train)
        torch.manual_seed(0)
        model = prepare(resnet(args.model, CIFAR), device, r.train.channels_last)
        done = train(model, data, Job(r, repeat, device))
    return len(data.train) / done.history[-1]["epoch_seconds"]


@contextlib.contextmanager
def plain():
    """The settings a hand-written loop runs with: torch's defaults, cuDNN autotuning on, but TF32
    off as the trainer has it (``devices.configure``): torch's default runs cuDNN convolutions in
    TF32, which would time a cheaper fp32 loop than the trainer's."""
    with restored():
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield


class PilDataset(torch.utils.data.Dataset):
    """What a hand-written pipeline holds: PIL images, transformed one by one."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        from PIL import Image
        from torchvision import transforms as T

        self.images = [Image.fromarray(im) for im in images]
        self.labels = labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(mean, std)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def reference_loader(args, data, device) -> torch.utils.data.DataLoader:
    """The plain loop's input: PIL images transformed one by one by ``workers`` processes."""
    images = data.train.x.permute(0, 2, 3, 1).cpu().numpy()
    ds = PilDataset(images, data.train.y.cpu().numpy(), data.mean.flatten().tolist(), data.std.flatten().tolist())
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                       drop_last=True, pin_memory=device.type == "cuda",
                                       persistent_workers=args.workers > 0)


def reference_rate(args, loader, device) -> float:
    """Images/s of the plain loop (standard step, plain settings) over its second epoch on a fresh
    network: measured as the trainer is."""
    o = recipe(args).optim
    with plain():
        torch.manual_seed(0)
        model = resnet(args.model, CIFAR).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                              weight_decay=o.weight_decay)
        model.train()
        for epoch in range(2):  # the first warms up
            synchronize(device)
            began, seen = time.perf_counter(), 0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                seen += len(y)
            synchronize(device)
    return seen / (time.perf_counter() - began)


def rates(args, data, device, settled: FastPath, grid: list[FastPath]) -> dict[str, list[float]]:
    """Each timed variant's img/s, one per repeat: the trainer at the default precision on the
    settled path, at fp32 there, the plain loop, then on the rest of the ``grid``. A repeat times
    them back to back, the three of the headline ratios first, so each ratio compares rates taken
    within a minute of each other (a shared host's speed drifts by tens of percent over a few
    minutes)."""
    loader = reference_loader(args, data, device)

    def trainer(amp: str, path: FastPath):
        return lambda r: trainer_rate(args, data, device, amp, r, **path.settings, compile_backend=args.compile_backend)

    timers = {cell(settled): trainer(args.amp, settled), "fp32": trainer("off", settled),
              "reference": lambda r: reference_rate(args, loader, device)}
    timers |= {cell(p): trainer(args.amp, p) for p in grid if p != settled}
    out = {name: [] for name in timers}
    for r in range(args.repeats):
        for name, timer in timers.items():
            out[name].append(timer(r))
    return out


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def cell(path: FastPath) -> str:
    return str(path).replace(" ", "_")


def ratio(a: list[float], b: list[float]) -> tuple[float, list[float]]:
    """The median of the per-repeat ratios a[r] / b[r], and those ratios."""
    each = [x / y for x, y in zip(a, b)]
    return statistics.median(each), each


def training_flops_per_image(args, device) -> float:
    model = prepare(resnet(args.model, CIFAR), device, True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(args.batch_size, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / args.batch_size


def peak_flops(device, dtype: str) -> float:
    """The device's best measured FLOP/s in the given dtype (bf16, or fp32 without TF32: the
    recipe's own), under plain settings (TF32 off): the better of a large square matmul and a large 3x3
    convolution (on a CPU, oneDNN's convolutions outrun its matmul, so a matmul alone is no peak)."""
    dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    n = 4096 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    x = torch.randn(32, 256, 32, 32, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with plain():
        return max(_best(lambda: a @ b, 2 * n**3, device),
                   _best(lambda: F.conv2d(x, w, padding=1), 2 * 32 * 256 * 256 * 9 * 32 * 32, device))


def _best(op, flop: int, device) -> float:
    """Best FLOP/s of three back-to-back ``op()`` over five tries (after one untimed)."""
    op()
    best = 0.0
    for _ in range(5):
        synchronize(device)
        began = time.perf_counter()
        for _ in range(3):
            op()
        synchronize(device)
        best = max(best, 3 * flop / (time.perf_counter() - began))
    return best


def criteria_seconds(device, depth: int, scoring_size: int | None) -> dict[str, float]:
    data = load_dataset(synthetic(1000), device)
    torch.manual_seed(0)
    model = prepare(resnet(depth, CIFAR), device, True)
    out = {}
    for name in sorted(CRITERIA):
        cfg = OmegaConf.structured(CRITERIA.settings_of(name)(name=name))
        if scoring_size:
            cfg.scoring_size = scoring_size
        scoring = ScoringSet(*scoring_set(data, cfg.scoring_size, 0), cfg.batch_size, data.task)
        synchronize(device)
        began = time.perf_counter()
        score_blocks(name, model, scoring, cfg, 0)
        synchronize(device)
        out[name] = time.perf_counter() - began
    return out


def tracking_seconds(depth: int, log_model: bool) -> tuple[float, float]:
    """MLflow (start, one run with a trial's params, metrics, artifacts and, with ``log_model``,
    the ResNet as an MLflow model) + codecarbon start/stop."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        exp = connection.start(TrackingConfig(uri=f"sqlite:///{tmp}/bench.db", experiment="bench"), tmp)
        created = time.perf_counter() - began  # one-off per store, not per trial
        cfg = OmegaConf.structured(MeasureConfig(carbon_dir=f"{tmp}/cc"))
        began = time.perf_counter()
        with carbon.tracked(cfg, "bench"):
            pass
        params = {f"param.{i}": str(i) for i in range(120)}
        metrics = {f"metric_{i}": float(i) for i in range(40)}
        network = resnet(depth, CIFAR) if log_model else None  # as an MLflow model, like a trial's
        runs.log_run(exp, "bench", {"role": "bench"}, params, runs.Results(
            metrics, artifacts={"config.yaml": "a: 1\n", "blocks.json": {"scores": list(range(25))}}, network=network))
        return time.perf_counter() - began, created


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=int, default=32, help="ResNet depth")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per timed epoch (default: 16 on a CPU, 200 on a GPU: about 2 s either way)")
    p.add_argument("--repeats", type=positive, default=5,
                   help="rounds of timings, each variant once per round on a fresh network after a warm-up epoch")
    p.add_argument("--no-grid", action="store_true", help="skip the eager/compiled x layout grid of the trainer")
    p.add_argument("--compile-backend", default="inductor", help="the grid's torch.compile backend")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"], help="the trainer's default precision")
    p.add_argument("--data", default="synthetic", help="'synthetic' or an image folder (train/<class>/*)")
    p.add_argument("--criteria-depth", type=int, default=56, help="ResNet depth for (c)")
    p.add_argument("--scoring-size", type=int, default=None, help="for (c); default: the criterion config's")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")
    p.add_argument("--root", default=".lottery", help="paths.root: where decoded image caches live")
    p.add_argument("--no-log-model", action="store_true", help="(d) without the MLflow model (tracking.log_model=false)")
    args = p.parse_args(argv)
    register()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.steps = args.steps or (200 if device.type == "cuda" else 16)
    try:
        data = load_dataset(data_config(args, args.steps * args.batch_size), device)
    except LotteryError as e:  # a timed epoch is --steps batches of --batch-size images
        p.error(f"--data: {e}; lower --steps or --batch-size")

    dtype = precision(device, args.amp)
    settled, paths = settled_path(args, device)
    timed = rates(args, data, device, settled.path, [] if args.no_grid else paths)
    rate = {name: statistics.median(each) for name, each in timed.items()}
    ours, fp32, ref = rate[cell(settled.path)], rate["fp32"], rate["reference"]
    vs_ref, vs_ref_each = ratio(timed[cell(settled.path)], timed["reference"])
    fp32_vs_ref, fp32_vs_ref_each = ratio(timed["fp32"], timed["reference"])
    amp_speedup, amp_speedup_each = ratio(timed[cell(settled.path)], timed["fp32"])
    grid = {} if args.no_grid else {cell(p): rate[cell(p)] for p in paths}
    flops = training_flops_per_image(args, device)
    peak = peak_flops(device, dtype)
    peak_fp32 = peak if dtype == "fp32" else peak_flops(device, "fp32")
    crit = criteria_seconds(device, args.criteria_depth, args.scoring_size)
    track, db_setup = tracking_seconds(args.model, not args.no_log_model)
    trial_seconds = 2 * len(data.train) / ours  # the training phases of a dense + ticket pair, at this size
    figures = {
        "device": f"{device.type}:{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
                  f"({torch.get_num_threads()} threads)",
        "model": f"resnet{args.model}", "batch_size": args.batch_size, "amp": args.amp, "dtype": dtype,
        "fast_path": settled.tag, "trainer_img_s": ours, "trainer_fp32_img_s": fp32, "reference_img_s": ref,
        "trainer_vs_reference": vs_ref, "trainer_vs_reference_per_repeat": vs_ref_each, "rounds_img_s": timed,
        "trainer_fp32_vs_reference": fp32_vs_ref, "trainer_fp32_vs_reference_per_repeat": fp32_vs_ref_each,
        "amp_speedup": amp_speedup, "amp_speedup_per_repeat": amp_speedup_each,
        "training_gflop_per_image": flops / 1e9, "achieved_tflop_s": ours * flops / 1e12,
        "peak_tflop_s": peak / 1e12, "fraction_of_peak": ours * flops / peak,
        "peak_fp32_tflop_s": peak_fp32 / 1e12, "fp32_fraction_of_peak": fp32 * flops / peak_fp32,
        "trainer_grid_img_s": grid, "criteria_seconds": crit, "tracking_seconds": track, "tracking_store_setup_seconds": db_setup,
        "tracking_fraction_of_training": track / trial_seconds,
    }
    print(f"device {figures['device']}, ResNet{args.model}, batch {args.batch_size}, amp {args.amp} -> {dtype}")
    print(f"(a) trainer {dtype} {ours:8.1f} img/s | trainer fp32 {fp32:8.1f} img/s | plain fp32 loop {ref:8.1f} img/s")
    headline = ((f"{dtype} trainer / loop", vs_ref, vs_ref_each),
                ("fp32 trainer / loop", fp32_vs_ref, fp32_vs_ref_each), ("amp_speedup", amp_speedup, amp_speedup_each))
    print("    " + "; ".join(f"{name} {median:5.2f}x (rounds {', '.join(f'{x:.2f}' for x in each)})"
                             for name, median, each in headline))
    print(f"    the trainer's path: {settled.tag}")
    if grid:
        print(f"    trainer {dtype} grid (img/s): " + ", ".join(f"{k} {v:.1f}" for k, v in grid.items()))
    print(f"(b) {flops / 1e9:.3f} GFLOP per training image -> {dtype}: {ours * flops / 1e12:.3f} TFLOP/s of a "
          f"{peak / 1e12:.3f} TFLOP/s {dtype} peak (matmul or conv) = {100 * ours * flops / peak:.0f}%; fp32: "
          f"{fp32 * flops / 1e12:.3f} of {peak_fp32 / 1e12:.3f} = {100 * fp32 * flops / peak_fp32:.0f}%")
    print(f"(c) scoring ResNet{args.criteria_depth} ({args.scoring_size or 'default'} images): "
          + ", ".join(f"{k} {v:.2f}s" for k, v in crit.items()))
    print(f"(d) MLflow + codecarbon per trial {track:.2f}s ({100 * track / trial_seconds:.1f}% of this size's "
          f"training time; one-off store creation {db_setup:.2f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
