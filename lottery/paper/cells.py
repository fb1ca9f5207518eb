"""A paper table's cells from finished runs: exact matching, pairing by seed, intervals, verdicts.

A run belongs to a cell only when its ``cell_key`` (its trial identity less the seed; see
``lottery.experiment.identity``) equals the key of the trial the sweep would launch for that cell, so a run
with another data set, profile or any other override never lands in it. Within a cell, the newest
run of each seed stands and the older ones are counted as replaced. Every run's delta is already
paired by seed (ticket minus the dense network of the same seed), so a cell is the mean of those
deltas with its 95 % Student-t interval; a single seed shows McNemar's p instead. A signed cell
also says the seeds it needs to settle (``lottery.experiment.seed_plan``: from its pilot's sd).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lottery.experiment.seed_plan import Need, Target, need
from lottery.experiment.sweeps import Sweep
from lottery.measure.stats import ALPHA, Stat, summarize


@dataclass
class Cell:
    row: tuple[str, ...]
    column: str
    metric: str
    ours: Stat | None
    paper: float | None
    winning: bool | None = None  # Eq. 1, for signed tables
    significant: bool | None = None  # the interval excludes 0 (n = 1: McNemar p < 0.05)
    p_value: float | None = None  # t-test of mean 0 (n >= 2) or the run's own paired test (n = 1)
    sign_agrees: bool | None = None
    mark: str = ""  # best | second
    na: str | None = None  # why the model cannot run this cell's trial (e.g. p above its maximum)
    difference: bool = False  # the paired per-seed difference of two of the row's cells, not a trial's
    at_chance: bool = False  # a run's dense network did not learn (tag dense_at_chance): no finding
    replaced: int = 0  # older runs of the same identity and seed, superseded
    needs: Need | None = None  # the seeds its interval needs to settle (signed cells with a pilot of 2 seeds or more)
    target: Target = Target()  # what settles it
    runs: list[dict] = field(default_factory=list, repr=False)


def seed_of(run: dict) -> str:
    """A run's seed, as its tag (runs logged before seeds were tagged ran seed 0)."""
    return run["tags"].get("seed", "0")


def matching(cell_key: str | None, runs: list[dict]) -> tuple[list[dict], int]:
    """The newest run per seed among the runs of one identity (none for a cell that cannot run), and
    how many older ones it replaced."""
    if cell_key is None:
        return [], 0
    mine = sorted((r for r in runs if r["tags"].get("cell_key") == cell_key), key=lambda r: r.get("start", 0))
    by_seed = {seed_of(r): r for r in mine}
    return list(by_seed.values()), len(mine) - len(by_seed)


def _column_of(sweep: Sweep, cell: dict[str, str], metric: str) -> str:
    if sweep.columns == "metrics":
        return metric
    return cell[sweep.columns] if sweep.columns else metric


def single_run_p(metrics: dict) -> float | None:
    """The p of one ticket's paired test against its dense network (its task's: McNemar on
    images, a paired t on sequence accuracies); runs logged before tasks had one name only McNemar's."""
    return metrics.get("p_value", metrics.get("mcnemar_p"))


def _verdict(c: Cell, sweep: Sweep, chosen: list[dict], xi: str) -> None:
    """Eq. 1 (winning), significance and sign agreement of a signed cell."""
    if xi == "std":
        dense = summarize([r["metrics"].get("dense_accuracy") for r in chosen])
        margin = (dense.std or 0.0) if dense else 0.0
    else:
        margin = float(xi)
    c.winning = c.ours.mean + margin >= 0
    if c.ours.n >= 2:
        c.p_value, c.significant = c.ours.p_value, c.ours.significant
    elif (p := single_run_p(chosen[0]["metrics"])) is not None:
        c.p_value, c.significant = p, p < ALPHA
    c.sign_agrees = None if c.paper is None else (c.ours.mean >= 0) == (c.paper >= 0)


def build(sweep: Sweep, runs: list[dict], cell_keys: list[str | None], xi: str = "0",
          na: list[str | None] | None = None, target: Target = Target()) -> list[Cell]:
    """Cells of the table from run records {"tags", "metrics", "start"} (finished tickets);
    ``cell_keys`` holds the identity of each of ``sweep.cells()``, in order, ``na`` why a
    cell's trial cannot run on the model (``lottery.experiment.sweeps.inapplicable``), and
    ``target`` what settles a cell."""
    cells = []
    for cell, key, why in zip(sweep.cells(), cell_keys, na or [None] * len(cell_keys)):
        chosen, replaced = matching(key, runs)
        row = tuple(cell[k] for k in sweep.rows)
        for metric in sweep.metrics:
            column = _column_of(sweep, cell, metric)
            c = Cell(row, column, metric, summarize([r["metrics"].get(metric) for r in chosen]),
                     sweep.paper.get("|".join(row), {}).get(column), replaced=replaced, runs=chosen, na=why,
                     at_chance=any(r["tags"].get("dense_at_chance") == "true" for r in chosen), target=target)
            if sweep.signed and c.ours is not None:
                _verdict(c, sweep, chosen, xi)
                c.needs = need({seed_of(r): r["metrics"].get(metric) for r in chosen}, target.effect)
            cells.append(c)
    if sweep.difference:
        cells += differences(sweep, cells, target)
    if sweep.marks == "best_second":
        for row in {c.row for c in cells}:
            ranked = sorted((c for c in cells if c.row == row and c.ours), key=lambda c: -c.ours.mean)
            for c, mark in zip(ranked, ("best", "second")):
                c.mark = mark
    return cells


def differences(sweep: Sweep, cells: list[Cell], target: Target) -> list[Cell]:
    """Per row, the paired difference (same seed: same dense network, same data order) of the
    ``of`` column's metric minus the ``minus`` column's, with its 95 % interval and the seeds it needs."""
    d, out = sweep.difference, []
    at = {(c.row, c.column, c.metric): c for c in cells}
    for row in dict.fromkeys(c.row for c in cells):
        for metric in sweep.metrics:
            a, b = at.get((row, str(d["of"]), metric)), at.get((row, str(d["minus"]), metric))
            if a is None or b is None:
                continue
            mine = {seed_of(r): r["metrics"].get(metric) for r in b.runs}
            pairs = {s: r["metrics"].get(metric) - mine[s] for r in a.runs if (s := seed_of(r)) in mine
                     and r["metrics"].get(metric) is not None and mine[s] is not None}
            stat = summarize(list(pairs.values()))
            c = Cell(row, d["label"], metric, stat, None, difference=True, runs=[],
                     at_chance=a.at_chance or b.at_chance, needs=need(pairs, target.effect), target=target)
            if stat is not None and stat.n >= 2:
                c.p_value, c.significant = stat.p_value, stat.significant
            out.append(c)
    return out


def _values(runs: list[dict], read) -> str:
    found = sorted({str(v) for v in map(read, runs) if v is not None}, key=lambda v: (len(v), v))
    return ", ".join(found) or "?"


def budget(cells: list[Cell]) -> str:
    """The training budget behind the table, read from its runs (mixed values are all listed)."""
    runs = [r for c in cells for r in c.runs]
    if not runs:
        return "no runs"
    whole = (("profile", lambda r: r["tags"].get("profile")), ("data", lambda r: r.get("params", {}).get("data.name")),
             ("epochs", lambda r: r.get("params", {}).get("train.epochs")),
             ("training images", lambda r: _int(r["metrics"].get("train_images"))),
             ("test images", lambda r: _int(r["metrics"].get("test_images"))),
             ("amp", lambda r: r["tags"].get("amp")), ("device", lambda r: r["tags"].get("device")))
    seeds = {r["tags"].get("seed") for r in runs}
    return "; ".join(f"{name} {_values(runs, read)}" for name, read in whole) + f"; {len(seeds)} seed(s)"


def _int(v):
    return None if v is None else int(v)
