"""The mode contract and its registry: how a ticket gets its weights (docs/design.md §4).

A mode answers the pipeline's questions about itself, so no caller compares a mode's name: when
the blocks are scored (``scores_at_init``), which network the ticket's kept blocks come from
(``starting_network``), where in the dense schedule the ticket starts (``schedule_start``), which
rewind point the dense run must keep (``kept_rewind``) and what its rounds are (``rescores`` /
``retrains``). Each mode checks the settings it reads (the density, its rounds, the rewind point).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

from torch import nn

from lottery.config import ModeConfig, Registry, TrialConfig, bad_value
from lottery.networks import Anatomy
from lottery.training.trainer import epoch_of


class Origin(Protocol):
    """Where a ticket's starting weights can be read (the trial provides it)."""

    def dense_at(self, point: int | str) -> nn.Module:
        """The dense network at epoch ``point`` of its schedule (0 is theta_0), or at ``"final"``."""

    def fresh(self, seed_offset: int) -> nn.Module:
        """A newly initialised dense network, from the trial's seed plus ``seed_offset``."""


def blocks_to_remove(density, removable: int) -> int:
    """The number of blocks a density asks for (see ``TrialConfig.density``)."""
    if isinstance(density, float) and not density.is_integer():
        return max(1, round(density * removable))
    return int(density)


def resolved_rounds(cfg: TrialConfig, count: int) -> int:
    """The rounds ``prune.rounds`` asks for when ``count`` blocks go (0: one block per round)."""
    return count if cfg.prune.rounds == 0 else cfg.prune.rounds


class Mode(ABC):
    """One way of giving a ticket its weights. Subclasses set the class attributes and say where
    the ticket starts; the shared checks and derived values live here."""

    name: ClassVar[str]
    doc: ClassVar[str]  # one line: what it is and where it comes from
    prunes: ClassVar[bool] = True  # False only for the dense reference itself
    scores_at_init: ClassVar[bool] = False  # scored at theta_0 (before any training), else at theta_n
    rewinds: ClassVar[bool] = False  # reads rewind_epoch
    resumes_schedule: ClassVar[bool] = False  # trains epochs i..n of the dense schedule, else 0..n
    rescores: ClassVar[bool] = False  # prune.rounds > 1: re-scored after each round at the same weights
    retrains: ClassVar[bool] = False  # prune.rounds > 1: trained and rewound between rounds (IMP)

    @abstractmethod
    def starting_network(self, origin: Origin, rewind: int) -> nn.Module:
        """The dense-architecture network whose kept blocks the ticket starts from (``rewind``: the
        epoch i this trial rewinds to)."""

    def check(self, cfg: TrialConfig, anatomy: Anatomy, model: str) -> None:
        """The density a pruning mode removes, its rounds, and the rewind point a rewinding mode reads."""
        if self.prunes:
            _check_density(cfg.density, anatomy, model)
            count = blocks_to_remove(cfg.density, len(anatomy.removable))
            _check_rounds(cfg.prune.rounds, count, self)
        if self.rewinds:
            _check_rewind(cfg.rewind_epoch, cfg.train.epochs)

    def rescores_in(self, rounds: int) -> bool:
        """Whether a trial of ``rounds`` rounds re-scores between them at the same weights."""
        return self.rescores and rounds > 1

    def retrains_in(self, rounds: int) -> bool:
        """Whether a trial of ``rounds`` rounds trains and rewinds between them (layer-wise IMP)."""
        return self.retrains and rounds > 1

    def rewind_epoch(self, cfg: TrialConfig) -> int:
        """The epoch i this mode's ticket rewinds to (0 for a mode that does not rewind)."""
        return epoch_of(cfg.rewind_epoch, cfg.train.epochs) if self.rewinds else 0

    def schedule_start(self, rewind: int) -> int:
        """The first epoch of the dense schedule the ticket trains."""
        return rewind if self.resumes_schedule else 0

    def kept_rewind(self, rewind: int) -> int | None:
        """The rewind point theta_i the ticket starts from, when it starts from one (the dense run keeps it)."""
        return None


def _check_density(d, anatomy: Anatomy, model: str) -> None:
    if isinstance(d, float) and d == 1.0:
        raise bad_value("density", d, "is ambiguous: write 1 for one block, or a fraction below 1")
    if isinstance(d, float) and not d.is_integer() and not 0 < d < 1:
        raise bad_value("density", d, "give a block count (int) or a fraction in (0, 1)")
    count = blocks_to_remove(d, len(anatomy.removable))
    if count < 1:
        raise bad_value("density", d, "remove at least one block (use mode=dense for none)")
    if count > anatomy.max_removable:
        raise bad_value("density", d, f" is above {model}'s maximum of {anatomy.max_removable} blocks "
                                      f"({len(anatomy.removable)} removable, every stage keeps one)")


def _check_rounds(rounds: int, count: int, mode: Mode) -> None:
    if not 0 <= rounds <= count:
        raise bad_value("prune.rounds", rounds, f"give 1 (one shot) to {count} (one block per round: the density), "
                                                "or 0 for one block per round")
    if (count if rounds == 0 else rounds) > 1 and not (mode.rescores or mode.retrains):
        defined = ", ".join(f"mode={m.name}" for m in MODES.values() if m.rescores or m.retrains)
        raise bad_value("prune.rounds", rounds, f"mode={mode.name} has no rounds; they are defined for {defined}")


def _check_rewind(r, epochs: int) -> None:
    if isinstance(r, float) and not r.is_integer() and not 0 <= r < 1:
        raise bad_value("rewind_epoch", r, "give an epoch (int) or a fraction in [0, 1)")
    if not 0 <= epoch_of(r, epochs) < epochs:
        raise bad_value("rewind_epoch", r, f" lies outside the schedule [0, {epochs})")


MODES: Registry[Mode] = Registry("mode", group="mode", base=ModeConfig)
