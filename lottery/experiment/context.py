"""One trial's design (``lottery.experiment.design``) with its I/O on top: the MLflow experiment,
the dense store, the data on the training device and the shifted test sets drawn from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery import networks
from lottery.experiment.design import Design
from lottery.measure.robustness import ShiftedSets, load_shifted
from lottery.tracking import runs
from lottery.tracking.store import DenseStore
from lottery.training.data import Dataset, load_dataset
from lottery.training.trainer import Job, prepare


@dataclass
class Context(Design):
    experiment: str = ""  # MLflow experiment id
    store: DenseStore | None = None
    data: Dataset | None = None  # loaded by ``load``
    shifted: ShiftedSets | None = None
    fast_path: str = ""  # the layout and compile the trial trains with, and why (``lottery.experiment.fast_path``)

    @classmethod
    def open(cls, design: Design) -> "Context":
        """The design with its MLflow experiment (the tracking store checked: one line if it is
        unusable) and its dense store."""
        cfg = design.cfg
        own = {f.name: getattr(design, f.name) for f in dataclasses.fields(Design)}
        return cls(**own, experiment=runs.start(cfg.tracking, cfg.paths.root), store=DenseStore(cfg.store.root))

    def load(self) -> "Context":
        """The data on the training device and the shifted test sets drawn from it."""
        self.data = load_dataset(self.cfg.data, self.device)
        self.shifted = load_shifted(self.cfg.robustness, self.data, self.cfg.data.cache, self.device)
        return self

    @property
    def outbox(self) -> Path:
        """Where results MLflow did not take wait (``lottery.tracking.outbox``)."""
        return self.store.root / "outbox"

    def job(self, **span) -> Job:
        """A training job of this trial's recipe, seed and device (``span``: see ``lottery.training.trainer.Job``)."""
        return Job(self.cfg.train, self.cfg.seed, self.device, **span)

    def build(self, seed: int) -> torch.nn.Module:
        """A fresh dense-architecture network initialised from ``seed``, ready to train."""
        torch.manual_seed(seed)
        return prepare(networks.build(self.cfg.model, self.data.shape), self.device, self.cfg.train.channels_last)
