"""How a ticket gets its weights (SPEC §4): a table of modes instead of an if-chain."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    prunes: bool  # False only for the dense reference itself
    score_on: str | None  # "init" (theta_0) or "final" (theta_n)
    start_from: str | None  # "init", "rewind" (theta_i), "final" (theta_n) or "fresh" (new seed)
    resumes_schedule: bool  # trains epochs i..n with the dense LR schedule, else 0..n
    rewinds: bool  # reads rewind_epoch
    paper: str


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("dense", False, None, None, False, False, "the reference network F"),
        Mode("rewind", True, "final", "rewind", True, True, "Algorithm 1 (LTH with rewinding), Table 1"),
        Mode("lr_rewind", True, "final", "final", True, True, "learning-rate rewinding (Renda et al. 2020)"),
        Mode("reinit", True, "final", "fresh", False, False, "random re-initialisation (Liu et al. 2019)"),
        Mode("init", True, "init", "init", False, False, "Algorithm 2 (tickets at initialization), Tables 2-5"),
    )
}

# Offset that makes a re-initialised ticket's weights independent of the dense theta_0.
REINIT_SEED_OFFSET = 1_000_000
