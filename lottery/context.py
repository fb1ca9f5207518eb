"""One trial's derived values, computed once from its config, that every step of the pipeline
reads: what mode, on which device, how many blocks go, from which epoch, the dense network's
anatomy, the data, the store and the MLflow experiment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lottery import models, tracking
from lottery.checks import validate
from lottery.config import blocks_to_remove
from lottery.data import Dataset, load_dataset
from lottery.identity import trial_keys
from lottery.modes import MODES, Mode, rounds_of
from lottery.robustness import ShiftedSets, load_shifted
from lottery.store import DenseStore
from lottery.devices import pick_device
from lottery.train import Job, prepare


@dataclass
class Context:
    cfg: object  # the composed, validated trial config
    mode: Mode
    anatomy: models.Anatomy  # of the dense network
    device: torch.device
    experiment: str  # MLflow experiment id
    keys: dict[str, str]  # cell_key and config_key (lottery.identity)
    rewind: int  # the epoch i the ticket rewinds to (0 unless the mode rewinds)
    remove: int  # blocks the ticket loses (0 for the dense reference)
    rounds: int  # in which they go (prune.rounds resolved: 0 is one block per round)
    store: DenseStore
    data: Dataset | None = None  # loaded by ``load``
    shifted: ShiftedSets | None = None

    @classmethod
    def open(cls, cfg, job: int = 0) -> "Context":
        """Validate the config (one line for any mistake, before any work) and derive the rest
        (``job``: the trial's number in a multirun, which places it on one of the box's GPUs)."""
        anatomy = validate(cfg)
        mode = MODES[cfg.mode.name]
        device = pick_device(cfg.device, job)
        remove = blocks_to_remove(cfg.density, len(anatomy.removable)) if mode.prunes else 0
        return cls(cfg, mode, anatomy, device, tracking.start(cfg.tracking, cfg.paths.root), trial_keys(cfg, device),
                   mode.rewind_epoch(cfg), remove, rounds_of(cfg, remove), DenseStore(cfg.store.root))

    def load(self) -> "Context":
        """The data on the training device and the shifted test sets drawn from it."""
        self.data = load_dataset(self.cfg.data, self.device)
        self.shifted = load_shifted(self.cfg.robustness, self.data, self.cfg.data.cache, self.device)
        return self

    @property
    def outbox(self):
        """Where results MLflow did not take wait (``lottery.outbox``)."""
        return self.store.root / "outbox"

    @property
    def model_name(self) -> str:
        return models.label(self.cfg.model)

    @property
    def kept_rewind(self) -> int | None:
        """The rewind point theta_i the ticket starts from, when it starts from one."""
        return self.rewind if self.mode.start_from == "rewind" else None

    def job(self, **span) -> Job:
        """A training job of this trial's recipe, seed and device (``span``: see ``lottery.train.Job``)."""
        return Job(self.cfg.train, self.cfg.seed, self.device, **span)

    def build(self, seed: int) -> torch.nn.Module:
        """A fresh dense-architecture network initialised from ``seed``, ready to train."""
        torch.manual_seed(seed)
        return prepare(models.build(self.cfg.model, self.data.shape), self.device, self.cfg.train.channels_last)
