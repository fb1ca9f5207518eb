"""Accuracy under distribution shift: CIFAR-10-C (released, or its corruptions regenerated on the
data's test split) and CIFAR-10.2, each named by what was measured.

Released CIFAR-10-C is a folder of ``<corruption>.npy`` (5 severities x 10,000 uint8 images)
and ``labels.npy``; CIFAR-10.2 is ``cifar102_test.npz`` with ``images`` and ``labels``. Both are
read with ``allow_pickle=False``, and only for a source whose images are CIFAR-10's
(``Source.released_sets``). Without the released folder the corruptions are regenerated from the
test split (``lottery.measure.corruptions``), cached under the project's cache folder, and named
"corruptions (CIFAR-10-C's, regenerated on <source>)" on the console and in the run's tags; the
metric keys (``cifar10c_accuracy``, ...) are the same either way.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from lottery.config import DataConfig, RobustnessConfig, TrainConfig, bad_value
from lottery.errors import LotteryError, check_choice
from lottery.files import atomic
from lottery.measure.corruptions import CORRUPTIONS, corrupt
from lottery.training.data import Dataset, Split, shape_of
from lottery.training.sources.base import IMAGE_SHAPE, IMAGE_SIZE, SOURCES
from lottery.training.tasks.base import SUBSET_SEED, balanced_indices
from lottery.training.trainer import evaluate

log = logging.getLogger("lottery")
REGEN_VERSION = 2  # 2: class-balanced images (the subset rule), not the first n
RELEASED = "CIFAR-10-C"  # what the released sets are called where they were measured
RELEASED_FILES = {"cifar10c_root": "CIFAR-10-C", "cifar102_path": "CIFAR-10.2"}


def regenerated_label(source: str) -> str:
    """What corruptions regenerated on a source's test split are called: not CIFAR-10-C itself."""
    return f"corruptions (CIFAR-10-C's, regenerated on {source or 'the test split'})"


@dataclass
class ShiftedSets:
    """Test sets under shift, each (corruption, severity, Split), and where they came from."""

    cifar10c: list[tuple[str, int, Split]]
    cifar10c_source: str  # released | regenerated | none
    cifar102: Split | None
    skipped: list[str]
    cifar10c_label: str = RELEASED  # what the corruption sets are: CIFAR-10-C, or its corruptions regenerated on
    # the data (``regenerated_label``); as ``cifar10c_source`` where none were measured

    def tags(self) -> dict[str, str]:
        """Where the shifted sets came from and what they are called, for the run's tags."""
        return {"cifar10c_source": self.cifar10c_source, "cifar10c_sets": str(len(self.cifar10c)),
                "cifar10c_skipped": ",".join(self.skipped) or "none", "cifar10c_label": self.cifar10c_label,
                "cifar102": "given" if self.cifar102 is not None else "absent"}

    def labels(self) -> dict[str, str]:
        """The console's names of the shifted metrics, by metric (``lottery.measure.metrics.console``)."""
        return {"cifar10c_accuracy": self.cifar10c_label}


def check(cfg: RobustnessConfig, data: DataConfig) -> None:
    """Known corruptions, severities 1..5, the given files present and meant for this data (the
    released sets are CIFAR-10's: ``Source.released_sets``), and images of CIFAR's shape (the
    corruptions' parameters are CIFAR-10-C's, for 32x32 RGB images). Data that are not images have
    no shifted sets: nothing is measured for them (``load_shifted``)."""
    shape = shape_of(data)
    if cfg.enabled and shape.kind == "images" and tuple(shape.input) != IMAGE_SHAPE:
        raise LotteryError(f"robustness (CIFAR-10-C, CIFAR-10.2) is measured on {'x'.join(map(str, IMAGE_SHAPE))} "
                           f"images, and these are {'x'.join(map(str, shape.input))}: set robustness.enabled=false")
    for name in cfg.corruptions:
        check_choice("corruption", name, CORRUPTIONS)
    if any(not 1 <= s <= 5 for s in cfg.severities):
        raise bad_value("robustness.severities", list(cfg.severities), "severities run from 1 to 5")
    for key, released in RELEASED_FILES.items():
        path = getattr(cfg, key)
        if cfg.enabled and path and not SOURCES[data.name].released_sets(data):
            hint = " (or data.cifar10=true if it holds CIFAR-10)" if "cifar10" in data else ""
            raise LotteryError(f"robustness.{key}={path}: the released {released} set is CIFAR-10's, and "
                               f"data={data.name}{hint} is not CIFAR-10: leave it unset (the corruptions are "
                               "then regenerated on this data's test split)")
        if cfg.enabled and path and not Path(path).expanduser().exists():
            raise LotteryError(f"robustness.{key}={path} does not exist")


def _split(x: np.ndarray, y: np.ndarray, device) -> Split:
    """A shifted set in host memory, pinned when it is bound for a GPU (``on_device`` moves one
    set at a time: CIFAR-10-C whole would hold 2.2 GB of device memory per process)."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    if torch.device(device).type == "cuda":
        xt, yt = xt.pin_memory(), yt.pin_memory()
    return Split(xt, yt)


def on_device(split: Split, device) -> Split:
    return Split(split.x.to(device, non_blocking=True), split.y.to(device, non_blocking=True))


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as e:
        raise LotteryError(f"cannot read {path} ({type(e).__name__}: {e})") from None


def released_cifar10c(cfg: RobustnessConfig, device):
    """The released CIFAR-10-C sets of ``cfg`` (robustness config): class-balanced images of each
    corruption and severity."""
    root, images = Path(cfg.cifar10c_root).expanduser(), cfg.images
    if not root.is_dir():
        raise LotteryError(f"robustness.cifar10c_root={root} does not exist")
    labels = _load_npy(root / "labels.npy")
    sets = []
    for name in cfg.corruptions:
        arr = _load_npy(root / f"{name}.npy")
        per = len(arr) // 5
        for s in cfg.severities:
            start = (s - 1) * per
            rows = start + balanced_indices(np.asarray(labels[start:start + per]), min(images or per, per), SUBSET_SEED)
            sets.append((name, s, _split(np.asarray(arr[np.sort(rows)]), np.asarray(labels[np.sort(rows)]), device)))
    return sets


def regenerated_cifar10c(cfg: RobustnessConfig, data: Dataset, names: list[str], cache: Path, device):
    """The corruptions ``names`` at ``cfg.severities`` (robustness config), regenerated from the
    test split's class-balanced images and cached under ``cache``."""
    chosen = data.subset(data.test, cfg.images)
    clean = chosen.x.permute(0, 2, 3, 1).cpu().numpy()
    labels = chosen.y.cpu().numpy()
    seed = cfg.seed
    sets = []
    for name in names:
        for s in cfg.severities:
            tag = f"{data.fingerprint}|{name}|{s}|{len(clean)}|{seed}|v{REGEN_VERSION}"
            path = cache / f"cifar10c-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.npy"
            with FileLock(f"{path}.lock"):  # concurrent trials regenerate each set once
                if not path.exists():
                    with atomic(path) as tmp:
                        np.save(tmp, corrupt(clean, name, s, seed))
            sets.append((name, s, _split(np.load(path, allow_pickle=False), labels, device)))
    return sets


def load_shifted(cfg: RobustnessConfig, data: Dataset, cache: str, device) -> ShiftedSets:
    """The configured CIFAR-10-C and CIFAR-10.2 sets (CIFAR-10.2 None when no file is given;
    none at all for a task they do not apply to, such as language modelling)."""
    skipped: list[str] = []
    sets: list = []
    applies = data is None or data.task.shifted_sets  # (released sets are read without the data)
    source = "none" if applies else f"not defined for {data.task.name}"
    label = source
    enabled = cfg.enabled and applies
    if enabled:
        if cfg.cifar10c_root:
            sets = released_cifar10c(cfg, device)
            source, label = "released", RELEASED
        else:
            names = [n for n in cfg.corruptions if CORRUPTIONS[n] is not None]
            skipped = [n for n in cfg.corruptions if CORRUPTIONS[n] is None]
            sets = regenerated_cifar10c(cfg, data, names, Path(cache).expanduser(), device)
            source, label = "regenerated", regenerated_label(data.source)
    c102 = None
    if enabled and cfg.cifar102_path:
        path = Path(cfg.cifar102_path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as z:
                c102 = _split(z["images"], z["labels"], device)
        except Exception as e:
            shape = f"N,{IMAGE_SIZE},{IMAGE_SIZE},3"
            raise LotteryError(f"cannot read CIFAR-10.2 from {path} ({type(e).__name__}: {e}); "
                               f"expected an npz with 'images' ({shape} uint8) and 'labels'") from None
    return ShiftedSets(sets, source, c102, skipped, label)


def shifted_accuracies(model, data: Dataset, sets: ShiftedSets, t: TrainConfig, device) -> dict[str, float | None]:
    """cifar10c_accuracy (mean over corruption x severity) and cifar102_accuracy (None if absent)."""
    out: dict[str, float | None] = {"cifar10c_accuracy": None, "cifar102_accuracy": None}
    if sets.cifar10c:
        out["cifar10c_accuracy"] = float(np.mean([evaluate(model, data, t, device, on_device(split, device))
                                                  for _, _, split in sets.cifar10c]))
    if sets.cifar102 is not None:
        out["cifar102_accuracy"] = evaluate(model, data, t, device, on_device(sets.cifar102, device))
    return out
