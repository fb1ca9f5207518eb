"""How a ticket gets its weights (docs/design.md §4): a registry of modes instead of an if-chain,
each checking the settings it reads (the density, its rounds, the rewind point)."""

from __future__ import annotations

from dataclasses import dataclass

from lottery.config import ModeConfig, Registry, TrialConfig, bad_value
from lottery.networks import Anatomy
from lottery.training.trainer import epoch_of


def blocks_to_remove(density, removable: int) -> int:
    """The number of blocks a density asks for (see ``TrialConfig.density``)."""
    if isinstance(density, float) and not density.is_integer():
        return max(1, round(density * removable))
    return int(density)


def resolved_rounds(cfg: TrialConfig, count: int) -> int:
    """The rounds ``prune.rounds`` asks for when ``count`` blocks go (0: one block per round)."""
    return count if cfg.prune.rounds == 0 else cfg.prune.rounds


@dataclass(frozen=True)
class Mode:
    name: str
    prunes: bool  # False only for the dense reference itself
    score_on: str | None  # "init" (theta_0) or "final" (theta_n)
    start_from: str | None  # "init", "rewind" (theta_i), "final" (theta_n) or "fresh" (new seed)
    resumes_schedule: bool  # trains epochs i..n with the dense LR schedule, else 0..n
    rewinds: bool  # reads rewind_epoch
    doc: str  # one line: what it is and where it comes from
    rounds: str | None = None  # prune.rounds > 1: "rescore" (at the same weights) or "retrain" (IMP); None: one-shot

    def check(self, cfg: TrialConfig, anatomy: Anatomy, model: str) -> None:
        """The density a pruning mode removes, its rounds, and the rewind point a rewinding mode reads."""
        if self.prunes:
            _check_density(cfg.density, anatomy, model)
            count = blocks_to_remove(cfg.density, len(anatomy.removable))
            _check_rounds(cfg.prune.rounds, count, self)
        if self.rewinds:
            _check_rewind(cfg.rewind_epoch, cfg.train.epochs)

    def iterates(self, rounds: int) -> str | None:
        """How a trial of ``rounds`` rounds goes ("rescore" or "retrain"), or None for one shot."""
        return self.rounds if rounds > 1 else None

    def rewind_epoch(self, cfg: TrialConfig) -> int:
        """The epoch i this mode's ticket rewinds to (0 for a mode that does not rewind)."""
        return epoch_of(cfg.rewind_epoch, cfg.train.epochs) if self.rewinds else 0


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
    if (count if rounds == 0 else rounds) > 1 and mode.rounds is None:
        defined = ", ".join(f"mode={m.name}" for m in MODES.values() if m.rounds)
        raise bad_value("prune.rounds", rounds, f"mode={mode.name} has no rounds; they are defined for {defined}")


def _check_rewind(r, epochs: int) -> None:
    if isinstance(r, float) and not r.is_integer() and not 0 <= r < 1:
        raise bad_value("rewind_epoch", r, "give an epoch (int) or a fraction in [0, 1)")
    if not 0 <= epoch_of(r, epochs) < epochs:
        raise bad_value("rewind_epoch", r, f" lies outside the schedule [0, {epochs})")


MODES: Registry[Mode] = Registry("mode", group="mode", base=ModeConfig)
for _mode in (
    Mode("dense", False, None, None, False, False, "the reference network F"),
    Mode("rewind", True, "final", "rewind", True, True, "Algorithm 1 (LTH with rewinding), Table 1; with "
         "prune.rounds, layer-wise IMP", "retrain"),
    Mode("lr_rewind", True, "final", "final", True, True, "learning-rate rewinding (Renda et al. 2020)"),
    Mode("reinit", True, "final", "fresh", False, False, "random re-initialisation (Liu et al. 2019)"),
    Mode("init", True, "init", "init", False, False, "Algorithm 2 (tickets at initialization), Tables 2-5; "
         "with prune.rounds, re-scored after each round", "rescore"),
):
    MODES.add(_mode.name, _mode)

# Offset that makes a re-initialised ticket's weights independent of the dense theta_0.
REINIT_SEED_OFFSET = 1_000_000
