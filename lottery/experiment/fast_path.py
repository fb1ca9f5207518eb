"""The trainer's fast path on the machine it finds: the memory layout of images (channels_last or
contiguous) and whether the network is compiled, chosen per device, precision and architecture.

Both say how a step runs, never what it trains (a compiled step takes an epoch's last partial
batch eagerly), so neither is part of a trial's identity. A setting the config leaves null is
chosen by timing the recipe's own training step on this device (``costs.throughputs``: the
candidates take turns step by step, read as paired rounds), and the figures are remembered in
the store (``fast_path.json``), so a config takes the same path in that store every time and
gives the same numbers. A setting the config gives is kept (docs/design.md §5.1).
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from lottery import networks
from lottery.config import TrainConfig, TrialConfig
from lottery.errors import first_cause, one_line
from lottery.files import content_key, write_json
from lottery.measure.costs import throughputs
from lottery.training.data import shape_of, train_images
from lottery.training.devices import model_of, precision
from lottery.training.recipe import Recipe
from lottery.training.trainer import prepare

log = logging.getLogger("lottery")

MARGIN = 1.05  # another path is taken only when this much faster than the default in every round: a near tie keeps it
ROUNDS = 5  # paired rounds the timed steps are read as (as make bench's): stretches in which the candidates take turns
WORTH_COMPILING_S = 300.0  # a training shorter than this (eager) is not worth a compile's tens of seconds
FILE = "fast_path.json"


@dataclass(frozen=True)
class FastPath:
    channels_last: bool
    compile: bool

    def __str__(self) -> str:
        return f"{'compiled' if self.compile else 'eager'} {'channels_last' if self.channels_last else 'contiguous'}"

    @property
    def settings(self) -> dict:
        return {"channels_last": self.channels_last, "compile": self.compile}

    def recipe(self, cfg: TrialConfig) -> Recipe:
        """The trial's recipe with this path's settings."""
        return Recipe.of(cfg).with_train(self.train(cfg.train))

    def train(self, t: TrainConfig) -> TrainConfig:
        """The loop's settings with this path's."""
        return OmegaConf.merge(t, self.settings)


DEFAULT = FastPath(channels_last=True, compile=False)  # first among the candidates: a near tie keeps it


def candidates(cfg: TrialConfig) -> list[FastPath]:
    """The paths the config leaves open, eager first and channels_last first (the default, the
    first, wins a near tie): a given setting is kept; layout matters to images only; a captured
    CUDA graph is not compiled."""
    t = cfg.train
    if t.channels_last is not None:
        layouts = [bool(t.channels_last)]
    else:
        layouts = [True, False] if shape_of(cfg.data).kind == "images" else [True]
    compiles = [bool(t.compile)] if t.compile is not None else [False] if t.cuda_graph else [False, True]
    return [FastPath(cl, c) for c in compiles for cl in layouts]  # (DEFAULT first where open)


def rounds_of(samples: list[float]) -> list[float]:
    """A candidate's per-step rates as ``ROUNDS`` rounds of consecutive steps (fewer, of a step
    each, for fewer steps), each the round's images over its seconds: the candidates take turns
    step by step, so every candidate's k-th round covers the same stretch of the host's time."""
    n = min(ROUNDS, len(samples))
    chunks = [samples[i * len(samples) // n:(i + 1) * len(samples) // n] for i in range(n)]
    return [len(c) / sum(1 / r for r in c) for c in chunks]


def worst_ratio(rounds: dict[FastPath, list[float]], p: FastPath, default: FastPath) -> float:
    """``p``'s rate over the default's in its worst paired round."""
    return min(a / b for a, b in zip(rounds[p], rounds[default]))


def decide(rounds: dict[FastPath, list[float]], default: FastPath, training_s: float, compile_s: float) -> FastPath:
    """Of the timed paths faster than ``default`` beyond the rounds' spread (by ``MARGIN`` in every
    paired round: drift of a shared host between rounds touches both alike, and one lucky stretch
    is not enough) that finish the training sooner, the one that finishes soonest at its median
    rate (``training_s`` at the default's; a path that compiles where the default does not pays
    its compile, again in every training); else the default."""
    rate = {p: statistics.median(r) for p, r in rounds.items()}

    def total(p: FastPath) -> float:
        return training_s * rate[default] / rate[p] + (compile_s if p.compile and not default.compile else 0.0)

    better = [p for p in rounds if worst_ratio(rounds, p, default) >= MARGIN and total(p) < training_s]
    return min(better, key=total, default=default)


def verdict(rounds: dict[FastPath, list[float]], default: FastPath, chosen: FastPath) -> str:
    """Why the path taken beat the default, or why a path faster at its median was not taken."""
    rate = {p: statistics.median(r) for p, r in rounds.items()}
    if chosen != default:
        return f"{chosen} beat {default} in every round (its worst {worst_ratio(rounds, chosen, default):.2f}x)"
    rival = max((p for p in rounds if rate[p] > rate[default]), key=rate.get, default=None)
    if rival is None:
        return ""
    why = ("within the rounds' spread" if worst_ratio(rounds, rival, default) < MARGIN
           else "not paying for its compile")
    return f"kept {default}: {rival} {rate[rival]:.0f} vs {rate[default]:.0f} img/s {why}"


@dataclass
class Settled:
    path: FastPath
    how: str  # the only path open | timed here | remembered from <when> | untimed: <why>
    figures: str = ""  # the timed rates, and why compile was not tried

    @property
    def tag(self) -> str:
        """The run's ``fast_path`` tag, e.g. ``eager channels_last (timed here: eager channels_last 930, ...)``."""
        return f"{self.path} ({self.how}{': ' + self.figures if self.figures else ''})"

    def config(self, cfg: TrialConfig) -> TrialConfig:
        """A copy of ``cfg`` that trains on this path; ``cfg`` itself stays as validated."""
        settled = copy.deepcopy(cfg)
        settled.train = self.path.train(cfg.train)
        return settled


def settle(cfg: TrialConfig, device: torch.device) -> Settled:
    """The path the trial trains on: the only candidate, or the fastest beyond the rounds' spread
    as timed on this device (``decide``).

    The paths of the default's kind (eager, unless the config compiles) are timed first; the
    others (compiled) only for a training long enough to pay for a compile, all candidates then
    timed again together. Each timing is an entry of its own in the book, written once: a trial
    reads the same entry, and so takes the same path, however many others ran before it. Held
    under the store's lock, so concurrent trials time once, one after another."""
    paths = candidates(cfg)
    if len(paths) == 1:
        return Settled(paths[0], "the only path open")
    store = Path(cfg.store.root)
    store.mkdir(parents=True, exist_ok=True)
    first = [p for p in paths if p.compile == paths[0].compile]
    with FileLock(str(store / FILE) + ".lock"):
        book = _read(store / FILE)
        try:
            entry, timed = _entry(cfg, device, book, first, None)
            training_s = _training_images(cfg) / statistics.median(entry["img_s"][str(paths[0])])
            worth = len(first) < len(paths) and training_s >= WORTH_COMPILING_S
            if worth:
                entry, more = _entry(cfg, device, book, paths, entry)
                timed = timed or more
        except torch.OutOfMemoryError:  # copies of every candidate at once: more than one training holds
            log.warning("fast path: out of memory timing %d paths at once; training on %s, untimed", len(paths),
                        paths[0])
            return Settled(paths[0], "untimed: out of memory timing the candidates together")
        if timed:
            write_json(store / FILE, book)
    rounds = {p: entry["img_s"][str(p)] for p in paths if str(p) in entry["img_s"]}
    training_s = _training_images(cfg) / statistics.median(rounds[paths[0]])
    chosen = decide(rounds, paths[0], training_s, entry["compile_s"] or 0.0)
    figures = (", ".join(f"{p} {statistics.median(r):.0f}" for p, r in rounds.items()) +
               f" img/s, medians of {len(rounds[paths[0]])} paired rounds")
    if entry.get("compile_failed"):
        figures += f"; compiling fails here: {entry['compile_failed']}"
    elif len(first) < len(paths) and not worth:
        figures += f"; compile not tried: ~{training_s:.0f} s of training"
    elif entry["compile_s"] is not None and len(first) < len(paths):
        figures += f"; a compile {entry['compile_s']:.0f} s, training ~{training_s:.0f} s"
    why = verdict(rounds, paths[0], chosen)
    figures += f"; {why}" if why else ""
    settled = Settled(chosen, "timed here" if timed else f"remembered from {entry['when']}", figures)
    log.info("fast path: %s", settled.tag)
    return settled


def _entry(cfg: TrialConfig, device: torch.device, book: dict, paths: list[FastPath],
           eager: dict | None) -> tuple[dict, bool]:
    """The book's entry for timing ``paths`` together, timed now (and added) if missing; whether
    it was. ``eager``: the entry of the eager paths alone, whose rates stand where compiling fails
    on this host."""
    key = book_key(cfg, device, paths)
    if content_key(key) in book:
        return book[content_key(key)], False
    entry = {"key": key, "compile_s": None, "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        entry["img_s"], entry["compile_s"] = _rates(cfg, device, paths, strict=eager is not None)
    except torch._dynamo.exc.TorchDynamoException as e:  # a compiler's failure: the eager paths alone
        why = one_line(first_cause(e))
        log.warning("fast path: compiling fails on this host (%s); choosing among the eager paths (remembered in "
                    "%s: delete it to time again)", why, Path(cfg.store.root) / FILE)
        entry["img_s"], entry["compile_failed"] = dict(eager["img_s"]), why
    book[content_key(key)] = entry
    return entry, True


def _read(path: Path) -> dict:
    """The remembered timings; none where the file is missing or unreadable (then timed again and rewritten)."""
    try:
        book = json.loads(path.read_text())
        if isinstance(book, dict):
            return book
        why = "not a JSON object"
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        why = type(e).__name__
    log.warning("%s is unreadable (%s); timing the fast path again", path, why)
    return {}


def book_key(cfg: TrialConfig, device: torch.device, paths: list[FastPath]) -> dict:
    """What a timing depends on: the device's model (not its index: a multi-GPU box's jobs share
    one figure, and a ticket on cuda:1 trains as its dense network did on cuda:0) and threads,
    precision, the recipe's step, the architecture (its config: pretrained weights by their folder,
    not hashed again) and its input, torch's version, the candidates and the rounds they are read as."""
    t, shape = cfg.train, shape_of(cfg.data)
    return {"device": model_of(device), "precision": precision(device, t.amp), "deterministic": bool(t.deterministic),
            "batch_size": t.batch_size, "cuda_graph": bool(t.cuda_graph), "compile_backend": t.compile_backend,
            "model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True), "input": list(shape.input),
            "classes": shape.classes,
            "torch": torch.__version__, "candidates": [str(p) for p in paths], "rounds": ROUNDS}


def _training_images(cfg: TrialConfig) -> int:
    return cfg.train.epochs * train_images(cfg.data)


def _rates(cfg: TrialConfig, device: torch.device, paths: list[FastPath],
           strict: bool) -> tuple[dict[str, list[float]], float | None]:
    """Each path's training images/s in paired rounds (``rounds_of``: the candidates taking turns),
    and the seconds the timing spent beyond its steps: compiling, when some paths compile (their
    compiles, one per compiled path, averaged). ``strict``: a compile that fails raises (rather
    than time the eager step under the compiled path's name). The global random state is put
    back: timing or remembering the paths leaves the trial's draws alike."""
    m = cfg.measure
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        base = networks.build(cfg.model, shape_of(cfg.data))
        placed = {cl: prepare(copy.deepcopy(base), device, cl) for cl in {p.channels_last for p in paths}}
        models = [placed[p.channels_last] for p in paths]  # (each timed on a copy of its own)
        began = time.perf_counter()
        samples = throughputs(models, [p.recipe(cfg) for p in paths], device, m.throughput_steps, m.warmup_steps,
                              strict=strict)
        wall = time.perf_counter() - began
    rounds = {str(p): rounds_of(s) for p, s in zip(paths, samples)}
    stepping = sum((m.throughput_steps + m.warmup_steps) * cfg.train.batch_size / statistics.median(r)
                   for r in rounds.values())
    compiles = sum(p.compile for p in paths)
    return rounds, max(0.0, wall - stepping) / compiles if compiles else None
