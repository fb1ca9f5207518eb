"""The paper's claims C1-C9 (docs/design.md §8.1), and our questions beyond it Q1-Q2 (§11), each
judged from the cells of the table it rests on.

A cell *agrees* when its 95 % interval lies wholly on the claimed side of 0, *disagrees* when it
lies wholly on the other side, and is *inconclusive* otherwise (n = 1: McNemar's p < 0.05 and the
sign decide). A claim about *all* its cells is supported when every cell agrees and contradicted
when one disagrees; a claim about *most* is supported when more than half agree and contradicted
when it fails even counting every inconclusive cell as agreeing. A claim whose cells are missing
is *not run*. C6 and C9 are judged on means (costs are measured, not sampled). For an
inconclusive claim the report says whether more seeds could decide it at the smallest effect of
interest its table was built with (the seeds each of its cells needs, docs/design.md §8.2.1), at
what training time, and what its intervals settle already (where they exclude the paper's value).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

from lottery.experiment.estimate import duration
from lottery.experiment.seed_plan import need
from lottery.measure.stats import ALPHA, summarize

AGREE, DISAGREE, INCONCLUSIVE = "agree", "disagree", "inconclusive"


def side(cell: dict, claimed: int) -> str:
    """Where one cell (mean, n, ci_low/ci_high or p_value) stands on a claim of sign ``claimed``;
    a cell whose dense network did not learn is inconclusive, whatever its numbers."""
    if cell.get("at_chance"):
        return INCONCLUSIVE
    if cell.get("ci_low") is not None:
        lo, hi = claimed * cell["ci_low"], claimed * cell["ci_high"]
        return AGREE if min(lo, hi) > 0 else DISAGREE if max(lo, hi) < 0 else INCONCLUSIVE
    if cell.get("p_value") is not None and cell["p_value"] < ALPHA:
        return AGREE if claimed * cell["mean"] > 0 else DISAGREE
    return INCONCLUSIVE


def on_means(values: list[float]) -> str:
    """A series that should rise: agree when every step rises, else disagree."""
    return AGREE if all(b > a for a, b in zip(values, values[1:])) else DISAGREE


def paired(a: dict, b: dict, key: str, effect: float | None) -> dict | None:
    """The cell of per-seed differences a - b of ``key`` (same seeds: same dense network), with the
    seeds it needs at ``effect`` (its table's, None where the metric is no pp delta) and the two
    cells it draws on (``parts``: what more seeds would run)."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    values = {s: a["seeds"][s][key] - b["seeds"][s][key] for s in common
              if a["seeds"][s].get(key) is not None and b["seeds"][s].get(key) is not None}
    stat = summarize(list(values.values()))
    needs = need(values, effect) if effect else None
    return None if stat is None else {"mean": stat.mean, "n": stat.n, "ci_low": stat.ci_low, "ci_high": stat.ci_high,
                                      "at_chance": bool(a.get("at_chance") or b.get("at_chance")),
                                      "needs": needs and needs.seeds, "parts": [a, b]}


def verdict(quantifier: str, sides: list[str], expected: int) -> str:
    agree, disagree = sides.count(AGREE), sides.count(DISAGREE)
    if not sides or len(sides) < expected:
        return "not run"
    if quantifier == "all":
        return "supported" if agree == len(sides) else "contradicted" if disagree else "inconclusive"
    if agree > len(sides) / 2:
        return "supported"
    return "contradicted" if len(sides) - disagree <= len(sides) / 2 else "inconclusive"


def _cells(tables: dict, name: str, measured: bool = True, **where) -> list[dict]:
    """A table's cells (measured ones only, by default; never those the model cannot run) whose
    row values or column are in ``where``."""
    t = tables.get(name)
    if t is None:
        return []
    out = []
    for c in t["cells"]:
        row = {**dict(zip(t["rows"], c["row"])), "column": c["column"]}
        if (c["n"] or not measured) and not c.get("na") and all(row.get(k) in v for k, v in where.items()):
            out.append(c)
    return out


# What a claim's judge returns: the sides of its measured cells, how many cells it expects, and
# the cells whose seeds could decide it (those of pp deltas; none for one judged on means or CKA).
Judged = tuple[list[str], int, list[dict]]


def _signed(name: str, claimed: int, **where) -> Callable[[dict], Judged]:
    """Every cell of the table (filtered) on the claimed side of 0."""

    def judge(tables):
        if name not in tables:
            return [], 0, []
        cells = _cells(tables, name, **where)
        return [side(c, claimed) for c in cells], len(_cells(tables, name, False, **where)), cells

    return judge


def _layers_beat_filters(tables):
    diffs = []
    for crit in ("snip", "grasp"):
        layer = _cells(tables, "table3", structure={"layer"}, column={crit})
        filt = _cells(tables, "table3", structure={"filter"}, column={crit})
        diff = paired(layer[0], filt[0], "delta_pp", tables["table3"].get("effect")) if layer and filt else None
        if diff is not None:
            diffs.append(diff)
    return [side(d, +1) for d in diffs], 2 if "table3" in tables else 0, diffs


def _costs_rise(tables):
    t = tables.get("table4")
    if t is None:
        return [], 0, []
    sides, total = [], 0
    for model in ("resnet32", "resnet56"):
        for metric in ("flops_reduction_pct", "memory_reduction_pct", "co2_reduction_pct", "speedup"):
            total += 1
            cells = sorted((c for c in t["cells"] if c["row"][0] == model and c["column"] == metric),
                           key=lambda c: float(c["row"][1]))
            if cells and all(c["n"] for c in cells):
                sides.append(on_means([c["mean"] for c in cells]))
    return sides, total, []


def _beats(name: str, better: str, worse: str, metric: str, densities: tuple[str, ...],
           **where) -> Callable[[dict], Judged]:
    """At each density, the ``better`` column's metric above the ``worse`` column's (paired per seed)."""

    def judge(tables):
        if name not in tables:
            return [], 0, []
        pp, diffs = metric.endswith("_pp"), []
        for p in densities:
            a = _cells(tables, name, density={p}, column={better}, **where)
            b = _cells(tables, name, density={p}, column={worse}, **where)
            diff = paired(a[0], b[0], metric, tables[name].get("effect") if pp else None) if a and b else None
            if diff is not None:
                diffs.append(diff)
        return [side(d, +1) for d in diffs], len(densities), diffs if pp else []

    return judge


def _l1_rises_by_stage(tables):
    blocks = next((s["blocks"] for c in _cells(tables, "figure3") for s in c["seeds"].values() if s.get("blocks")),
                  None)
    if blocks is None:
        return [], 0, []
    stages = sorted(set(blocks["stage"]))
    means = [sum(v for v, s in zip(blocks["scores"], blocks["stage"]) if s == st) / blocks["stage"].count(st)
             for st in stages]
    return [on_means([a, b]) for a, b in zip(means, means[1:])], 2, []


BEYOND, LANGUAGE_MODELS = "Beyond the paper", "Beyond the paper: language models"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    table: str
    quantifier: str  # all | most
    judge: Callable[[dict], Judged]  # tables -> (sides of the measured cells, cells expected, cells seeds decide)
    section: str = "The paper's claims"  # the report's section that judges it


CLAIMS = (
    Claim("C1", "Tickets from a trained network with rewinding win for most criterion x rewind-point cells",
          "table1", "most", _signed("table1", +1)),
    Claim("C2", "Re-initialised tickets win (up to +0.85 pp)", "table1_reinit", "all", _signed("table1_reinit", +1)),
    Claim("C3", "GraSP tickets at initialization win at every p = 1..5", "table2", "all",
          _signed("table2", +1, column={"grasp"})),
    Claim("C4", "SNIP tickets at initialization lose from p = 3 on", "table2", "all",
          _signed("table2", -1, column={"snip"}, density={"3", "4", "5"})),
    Claim("C5", "At p = 1, removing layers beats removing as many filters, for SNIP and GraSP", "table3", "all",
          _layers_beat_filters),
    Claim("C6", "FLOPs, memory and CO2 fall and training speed-up grows as p grows (means)", "table4", "all",
          _costs_rise),
    Claim("C7", "Tickets keep or improve CIFAR-10-C accuracy for most cells", "table5", "most",
          _signed("table5", +1, column={"cifar10c_delta_pp"})),
    Claim("C8", "CKA of GraSP tickets to the dense network stays above SNIP's as p grows", "table2", "all",
          _beats("table2", "grasp", "snip", "cka", ("1", "2", "3", "4", "5"))),
    Claim("C9", "l1 block scores rise stage by stage (means)", "figure3", "all", _l1_rises_by_stage),
    # Beyond the paper (docs/design.md §11): its stated limitation and its open question, judged alike.
    Claim("Q1", "Re-scoring at initialization (one block per round) beats one-shot layer tickets", "iterative",
          "most", _signed("iterative", +1, column={"iterative - one-shot"}, density={"2", "3", "4", "5"}),
          BEYOND),
    Claim("Q2", "Layers and filters together beat layers alone at equal FLOPs", "joint", "most",
          _signed("joint", +1, column={"joint - layer"}), BEYOND),
    # Beyond the paper: language models (sweeps/lm.yaml), where layer pruning is studied most today.
    Claim("Q3", "Layer tickets of a transformer language model win at initialization (next-token accuracy)", "lm",
          "most", _signed("lm", +1, mode={"init"}), LANGUAGE_MODELS),
    Claim("Q4", "The paper's ranking carries over to language models: GraSP tickets at initialization beat SNIP's",
          "lm", "all", _beats("lm", "grasp", "snip", "delta_pp", ("1", "2", "3"), mode={"init"}), LANGUAGE_MODELS),
)


def judge(tables: dict) -> list[dict]:
    """Every claim's verdict and counts, from the tables' cells (``tables[name]`` = cells.json),
    and for an inconclusive one whether more seeds could decide it and what its intervals rule out."""
    out = []
    for c in CLAIMS:
        sides, expected, judged = c.judge(tables)
        found = verdict(c.quantifier, sides, expected)
        out.append({"id": c.id, "claim": c.text, "table": c.table, "section": c.section, "verdict": found,
                    "agree": sides.count(AGREE), "disagree": sides.count(DISAGREE),
                    "inconclusive": sides.count(INCONCLUSIVE), "cells": expected,
                    "more_seeds": more_seeds(judged, tables[c.table]) if found == "inconclusive" else None,
                    "ruled_out": ruled_out(judged, tables[c.table]) if found == "inconclusive" else None})
    return out


def ruled_out(judged: list[dict], table: dict) -> str | None:
    """What an inconclusive claim's intervals do settle: the range its cells' 95 % intervals lie in,
    and the cells whose own interval excludes the paper's value (None without intervals). Cells of
    a dense network that did not learn are no findings, and are left out like those of one seed."""
    cells = [j for j in judged if j.get("ci_low") is not None and not j.get("at_chance")]
    if not cells:
        return None
    which = ("every cell's 95 % interval lies" if len(cells) == len(judged) else
             f"the 95 % intervals of {len(cells)} of its {len(judged)} cells (the others: one seed, or a dense network "
             "that did not learn) lie")
    text = f"{which} within [{min(j['ci_low'] for j in cells):+.2f}, {max(j['ci_high'] for j in cells):+.2f}] pp"
    paper = [j for j in cells if j.get("paper") is not None]
    outside = [j for j in paper if not j["ci_low"] <= j["paper"] <= j["ci_high"]]
    if paper:
        text += f"; the paper's value lies outside the cell's own interval in {len(outside)} of {len(paper)} cells"
        text += "".join(f"{'; ' if k else ': '}{_label(j, table)}: {j['paper']:+.2f} "
                        f"{'above' if j['paper'] > j['ci_high'] else 'below'} [{j['ci_low']:+.2f}, {j['ci_high']:+.2f}]"
                        for k, j in enumerate(outside))
    return text


def _label(cell: dict, table: dict) -> str:
    """A table cell by its column and row values (``criterion=grasp density=2``); a column of
    metrics, or of a table built before its json named its columns, by the column alone."""
    columns = table.get("columns")
    column = f"{columns}={cell['column']}" if columns and columns != "metrics" else cell["column"]
    return " ".join([column, *(f"{k}={v}" for k, v in zip(table["rows"], cell["row"]))])


def more_seeds(judged: list[dict], table: dict) -> str:
    """Whether more seeds could decide an inconclusive claim at its table's smallest effect of
    interest: its cells' largest need, within the cap or not, and the training time of the trials
    that bring each cell to its need (capped)."""
    if not judged:
        return "seeds do not decide it: its cells are no pp deltas, so no smallest effect of interest applies"
    if "effect" not in table:
        return "unknown: its table predates the seeds a cell needs; build it again"
    effect, cap = table["effect"], table["max_seeds"]
    unknown = sum(j["needs"] is None for j in judged)
    if unknown:
        return (f"unknown until each cell has a pilot of 2 seeds or more ({unknown} of its {len(judged)} cells lack "
                f"one; --seeds auto runs it)")
    largest = max(j["needs"] for j in judged)
    if all(j["n"] >= j["needs"] for j in judged):
        wide = sum(j["ci_low"] is not None and (j["ci_high"] - j["ci_low"]) / 2 > effect for j in judged)
        had = f"no, not at ±{effect:g} pp: each cell has the seeds its pilot asked for (at most {largest})"
        if not wide:
            return f"{had}, and more would only resolve a difference smaller than that"
        return (f"{had}; {wide} of its {len(judged)} intervals came out wider than ±{effect:g} pp, their sd above the "
                "pilot's, and seeds added for that would be a second look at the data, which costs the test its "
                "level (docs/design.md §8.2.1)")
    trials, time = priced(judged, table, cap)
    if largest <= cap:
        return (f"yes, if its deltas are at least ±{effect:g} pp: up to {largest} seeds per cell (the largest need "
                f"among its cells) narrow every interval to that; {trials} more trial(s), {time}")
    beyond, beyond_time = priced(judged, table, largest)
    within = (f"the cap's {trials} more trial(s) ({time}) leave some interval wider than ±{effect:g} pp" if trials
              else "its cells have all the cap allows")
    return (f"not within {cap} seeds: its cells would need up to {largest}; {within}; --max-seeds {largest} would "
            f"narrow every interval to ±{effect:g} pp with {beyond} more trial(s), {beyond_time}")


def priced(judged: list[dict], table: dict, cap: int) -> tuple[int, str]:
    """``cost`` in words: the trials, and their training time or why it is unknown."""
    trials, seconds = cost(judged, table, cap)
    return trials, (f"~{duration(seconds)} of training" if seconds is not None else
                    "training time unknown: a seed of its cells logged no train_seconds or dense_train_seconds")


def cost(judged: list[dict], table: dict, cap: int) -> tuple[int, float | None]:
    """The trials that bring each table cell a claim draws on to its need (capped), and their
    training time at the mean its finished seeds took: each ticket's, and each new seed's dense
    network once (a dense network another cell of the table trained for that seed is not counted);
    None when a seed logged no training time."""
    wanted: dict[int, tuple[dict, int]] = {}
    for j in judged:
        for part in j.get("parts") or _parts(j, table):
            wanted[id(part)] = (part, max(min(j["needs"], cap), wanted.get(id(part), (part, 0))[1]))
    trained = {(_lineage(c), s) for c in table["cells"] for s in c["seeds"]}
    trials, seconds = 0, 0.0
    for cell, n in wanted.values():
        new = [str(s) for s in range(n) if str(s) not in cell["seeds"]]
        ticket = [v.get("train_seconds") for v in cell["seeds"].values()]
        dense = [v.get("dense_train_seconds") for v in cell["seeds"].values()]
        trials += len(new)
        if not new or seconds is None:
            continue
        if not ticket or None in ticket + dense:
            seconds = None
            continue
        fresh = {(_lineage(cell), s) for s in new} - trained
        seconds += statistics.fmean(ticket) * len(new) + statistics.fmean(dense) * len(fresh)
        trained |= fresh
    return trials, seconds


def _parts(cell: dict, table: dict) -> list[dict]:
    """The cells whose trials a table cell draws on: itself, or for a paired difference column's
    cell the two columns of its row."""
    if not cell.get("difference"):
        return [cell]
    of, minus = str(table["difference"]["of"]), str(table["difference"]["minus"])
    return [c for c in table["cells"] if c["row"] == cell["row"] and c["metric"] == cell["metric"]
            and c["column"] in (of, minus)]


def _lineage(cell: dict) -> tuple[str, str | None]:
    """What names the dense networks a cell's tickets prune, but for their seed: the dense key of
    its first seed (cells of one model, data and recipe share it)."""
    first = min(cell["seeds"], key=int)
    return first, cell["seeds"][first].get("dense_key")
