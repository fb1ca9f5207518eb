"""A trial's context: its design (``lottery.experiment.design``) with everything the pipeline reads
besides, built whole before the pipeline starts: where its results go (``Records``: the MLflow
experiment and the dense store), the config it trains by (the validated one with the fast path
settled: a new value, the validated config is never written), the data on the training device and
the shifted test sets drawn from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lottery import networks
from lottery.config import TrialConfig
from lottery.experiment.design import Design
from lottery.experiment.fast_path import Settled
from lottery.measure.robustness import ShiftedSets, load_shifted
from lottery.tracking import connection
from lottery.tracking.store import DenseStore
from lottery.training.data import Dataset, load_dataset
from lottery.training.recipe import Recipe
from lottery.training.trainer import Job, prepare


@dataclass(frozen=True)
class Records:
    """Where a trial's results are kept: its MLflow experiment and the dense store."""

    experiment: str  # MLflow experiment id
    store: DenseStore

    @classmethod
    def open(cls, cfg: TrialConfig) -> "Records":
        """The MLflow experiment (the tracking store checked: one line if it is unusable) and the dense store."""
        return cls(connection.start(cfg.tracking, cfg.paths.root), DenseStore(cfg.store.root))

    @property
    def outbox(self) -> Path:
        """Where results MLflow did not take wait (``lottery.tracking.outbox``)."""
        return self.store.root / "outbox"


@dataclass(frozen=True)
class Context:
    """Everything one trial's pipeline reads, complete from the start."""

    design: Design
    records: Records
    cfg: TrialConfig  # the design's config with the fast path settled (train.channels_last, train.compile)
    fast_path: str  # the layout and compile the trial trains with, and why (``lottery.experiment.fast_path``)
    data: Dataset
    shifted: ShiftedSets

    @classmethod
    def open(cls, design: Design, records: Records, settled: Settled) -> "Context":
        """The trial's context: its config on the settled fast path, the data loaded on the
        training device and the shifted test sets drawn from it."""
        cfg = settled.config(design.cfg)
        data = load_dataset(cfg.data, design.device)
        return cls(design, records, cfg, settled.tag, data,
                   load_shifted(cfg.robustness, data, cfg.data.cache, design.device))

    # The design's values, read as the context's own.
    mode = property(lambda self: self.design.mode)
    device = property(lambda self: self.design.device)
    keys = property(lambda self: self.design.keys)
    rewind = property(lambda self: self.design.rewind)
    remove = property(lambda self: self.design.remove)
    rounds = property(lambda self: self.design.rounds)
    model_name = property(lambda self: self.design.model_name)
    precision = property(lambda self: self.design.precision)
    kept_rewind = property(lambda self: self.design.kept_rewind)
    experiment = property(lambda self: self.records.experiment)
    store = property(lambda self: self.records.store)
    outbox = property(lambda self: self.records.outbox)

    def job(self, **span) -> Job:
        """A training job of this trial's recipe, seed and device (``span``: see ``lottery.training.trainer.Job``)."""
        return Job(Recipe.of(self.cfg), self.cfg.seed, self.device, **span)

    def build(self, seed: int) -> torch.nn.Module:
        """A fresh dense-architecture network initialised from ``seed``, ready to train."""
        torch.manual_seed(seed)
        return prepare(networks.build(self.cfg.model, self.data.shape), self.device, self.cfg.train.channels_last)
