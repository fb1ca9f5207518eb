"""How many seeds settle a cell (``--seeds auto``): an internal pilot (docs/design.md §8.2.1).

Every cell runs the ``PILOT`` seeds 0..2 first. From the paired deltas (ticket minus dense) of
the pilot seeds that finished, their sample sd alone (never their mean) gives the seeds whose 95 %
interval is no wider than ±effect pp, capped at ``max_seeds``. The pilot is seeds 0..2 whatever ran
later, so once a cell's pilot finished its plan never moves: a sweep run again runs nothing more.
The tables show the same need per cell, and the report reads it for its inconclusive claims.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass

from lottery.errors import LotteryError
from lottery.experiment.estimate import TrialState, duration, named
from lottery.measure.stats import seeds_needed, summarize

PILOT = 3  # seeds every cell runs before its need is known
NA = "n/a on this model"
PENDING = f"runs the {PILOT}-seed pilot first; its need is known after"


@dataclass(frozen=True)
class Target:
    """What settles a cell: its 95 % interval no wider than ±``effect`` pp (the smallest effect
    of interest), with at most ``max_seeds`` seeds."""

    effect: float = 1.0
    max_seeds: int = 10


@dataclass(frozen=True)
class Need:
    """What a cell's pilot says: its finished pilot seeds, their sd (pp), and the seeds the cell
    needs, uncapped."""

    pilot: int
    sd: float
    seeds: int


@dataclass(frozen=True)
class CellPlan:
    """The seeds one cell runs: its need capped, or the pilot's while the need is unknown (then
    ``unknown`` says why)."""

    seeds: int
    need: Need | None = None
    unknown: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """What settles a cell, the same for the sweep that plans its seeds and the table that shows them."""
    p.add_argument("--effect", default=str(Target.effect),
                   help="the smallest effect of interest in pp: a cell needs the seeds that make its 95 %% interval "
                        "no wider than ±EFFECT (default %(default)s)")
    p.add_argument("--max-seeds", default=str(Target.max_seeds),
                   help="the most seeds a cell's need runs (default %(default)s)")


def target_of(args: argparse.Namespace) -> Target:
    """``--effect`` and ``--max-seeds``, or one line on what is wrong with them."""
    try:
        effect = float(args.effect)
    except ValueError:
        effect = math.nan
    if not (math.isfinite(effect) and effect > 0):
        raise LotteryError(f"--effect={args.effect}: give the smallest effect of interest in pp, a number > 0")
    if not args.max_seeds.isdigit() or int(args.max_seeds) < PILOT:
        raise LotteryError(f"--max-seeds={args.max_seeds}: give a whole number >= {PILOT}, the pilot's seeds")
    return Target(effect, int(args.max_seeds))


def seeds_of(text: str) -> int | None:
    """``--seeds``: a count for every cell, or None for ``auto`` (the pilot, then each cell's need)."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise LotteryError(f"--seeds={text}: give a number of seeds >= 1, or auto")
    return int(text)


def need(by_seed: Mapping[str | int, float | None], effect: float) -> Need | None:
    """A cell's need from its values per seed (the pilot's alone are read), or None below two."""
    pilot = summarize([v for s, v in by_seed.items() if int(s) < PILOT])
    if pilot is None or pilot.n < 2:
        return None
    return Need(pilot.n, pilot.std, seeds_needed(pilot.std, pilot.n, effect))


def needs_text(seeds: int, max_seeds: int) -> str:
    return f"needs {seeds}" if seeds <= max_seeds else f"needs {max_seeds}, capped: would need {seeds}"


def plan_cells(pilots: list[TrialState], cells: list[dict[str, str]], metrics: list[str] | None, target: Target,
         pilot_ran: bool) -> list[CellPlan]:
    """Each cell's plan from the states of its pilot trials (``pilots``): the largest need of its
    ``metrics`` (None: an unsigned table, whose costs are measured, not sampled: the pilot alone).
    A cell whose pilot has trials left runs them first, unless ``pilot_ran`` (this sweep just ran
    them): then what finished decides."""
    out = []
    for cell in cells:
        mine = [s for s in pilots if s.cell == cell]
        finished = [s for s in mine if s.status == "finished"]
        if any(s.status == "n/a" for s in mine):
            out.append(CellPlan(PILOT, unknown=NA))
        elif metrics is None:
            out.append(CellPlan(PILOT, unknown="the pilot alone: the cells are measured costs, not paired deltas"))
        elif len(finished) < len(mine) and not pilot_ran:
            out.append(CellPlan(PILOT, unknown=PENDING))
        else:
            needs = [n for m in metrics if (n := need({s.seed: s.metrics.get(m) for s in finished}, target.effect))]
            found = max(needs, key=lambda n: n.seeds, default=None)
            out.append(CellPlan(min(found.seeds, target.max_seeds), found) if found else CellPlan(
                PILOT, unknown=f"{len(finished)} pilot seed(s) finished: too few for an sd, so no more run"))
    return out


def render(name: str, plans: list[CellPlan], cells: list[dict[str, str]], states: list[TrialState],
           target: Target) -> str:
    """The plan one line per cell, with the trials it has left and their estimated time (the
    survey's), and the time of the seeds beyond the pilot."""
    lines = [f"{name}: seed plan (--seeds auto, docs/design.md §8.2.1): a {PILOT}-seed pilot per cell, then the seeds "
             f"its 95 % interval of ticket - dense needs to be no wider than ±{target.effect:g} pp, at most "
             f"{target.max_seeds}; the need from the pilot's sd alone"]
    for cell, p in zip(cells, plans):
        left = [s for s in states if s.cell == cell and s.status not in ("finished", "n/a")]
        what = p.unknown if p.need is None else (f"pilot sd {p.need.sd:.2f} pp over {p.need.pilot} seeds: "
                                                 f"{needs_text(p.need.seeds, target.max_seeds)}")
        lines.append(f"  {named(cell)}: {what}" + (f"; {_left(left)}" if p.unknown != NA else ""))
    extra = [s for s in states if s.seed >= PILOT and s.status != "finished"]
    pending = sum(p.unknown == PENDING for p in plans)
    lines.append(f"beyond the pilot: {_left(extra) if extra or not pending else 'none planned yet'}"
                 + (f"; {pending} cell(s) know their need after their pilot" if pending else ""))
    return "\n".join(lines)


def _left(states: list[TrialState]) -> str:
    """How many trials are left to run and their estimated time (where the survey has one for each)."""
    if not states:
        return "nothing left to run"
    known = [s.seconds for s in states if s.seconds is not None]
    return f"{len(states)} trial(s) to run" + (f", ~{duration(sum(known))}" if len(known) == len(states) else "")
