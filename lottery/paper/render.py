"""A table's cells as markdown, csv and LaTeX: ours (mean ± std, 95 % interval, n, sig / n.s., the
seeds it needs) beside the paper's value, with a footer that states the budget and how many cells
are significant."""

from __future__ import annotations

import csv
import io
import json
import math

from lottery.experiment.seed_plan import PILOT, Target, needs_text
from lottery.experiment.sweeps import Sweep
from lottery.measure.stats import ALPHA, summarize
from lottery.paper.cells import Cell, budget, seed_of

MISSING = "missing"
NA = "n/a"


def _layout(cells: list[Cell]):
    rows = list(dict.fromkeys(c.row for c in cells))
    columns = list(dict.fromkeys(c.column for c in cells))
    return rows, columns, {(c.row, c.column): c for c in cells}


def _row_label(sweep: Sweep, row) -> str:
    return " ".join(sweep.label(k, v) for k, v in zip(sweep.rows, row))


def _col_label(sweep: Sweep, column: str) -> str:
    return sweep.label("metrics" if sweep.columns in ("metrics", None) else sweep.columns, column)


def _number(sweep: Sweep, value: float) -> str:
    return f"{value:+.2f}" if sweep.signed else f"{value:.2f}"


def ours_text(sweep: Sweep, c: Cell | None) -> str:
    if c is None:
        return "—"  # not a cell of the sweep's grids
    if c.na:
        return NA
    if c.ours is None:
        return MISSING
    s = c.ours
    text = ("(+) " if c.winning else "(-) ") if sweep.signed and not c.difference else ""
    text += _number(sweep, s.mean)
    if s.std is not None:
        text += f" ± {s.std:.2f}"
    if sweep.signed and s.ci_low is not None:
        text += f" [{_number(sweep, s.ci_low)}, {_number(sweep, s.ci_high)}]"
    detail = [f"n={s.n}"]
    if sweep.signed and s.n == 1 and c.p_value is not None:
        test = c.runs[0]["tags"].get("paired_test", "McNemar") if c.runs else "McNemar"  # its task's
        detail.append(f"{test} p={c.p_value:.3g}")
    if c.significant is not None:
        detail.append("sig" if c.significant else "n.s.")
    if c.needs is not None:
        detail.append(needs_text(c.needs.seeds, c.target.max_seeds))
    if c.at_chance:
        detail.append("dense at chance")
    return f"{text} ({', '.join(detail)})"


def paper_text(sweep: Sweep, c: Cell | None) -> str:
    if c is None or c.paper is None:
        return "—"
    text = (("(+) " if c.paper >= 0 else "(-) ") if sweep.signed else "") + _number(sweep, c.paper)
    if c.sign_agrees is not None:
        text += " ✓" if c.sign_agrees else " ✗"
    return text


def _marked(c: Cell | None, text: str, best: str, second: str) -> str:
    if c is not None and c.mark == "best":
        return best.format(text)
    if c is not None and c.mark == "second":
        return second.format(text)
    return text


# name, format, and the range the metric can take: a t-interval of few seeds near a bound can pass it
DENSE_NUMBERS = {"dense_accuracy": ("accuracy", "{:.2f} %", (0.0, 100.0)),
                 "dense_perplexity": ("perplexity", "{:.3f}", (1.0, math.inf))}


def dense_reference(cells: list[Cell]) -> list[str]:
    """The dense networks the cells compare against, per model, one per seed: their accuracy (and
    a language model's perplexity) as mean and 95 % interval over seeds, cut to the values the
    metric can take."""
    models: dict[str, dict[str, dict]] = {}  # model -> dense_key -> its metrics
    for c in cells:
        for r in c.runs:
            models.setdefault(r["tags"].get("model", "?"), {}).setdefault(r["tags"].get("dense_key"), r["metrics"])
    lines = []
    for model, dense in models.items():
        parts = []
        for key, (name, form, (low, high)) in DENSE_NUMBERS.items():
            s = summarize([m.get(key) for m in dense.values()])
            if s is not None:
                ci = (f" [{form.format(max(s.ci_low, low))}, {form.format(min(s.ci_high, high))}]"
                      if s.ci_low is not None else "")
                parts.append(f"{name} {form.format(s.mean)}{ci}")
        if parts:
            lines.append(f"Dense {model} (n = {len(dense)} network(s), mean [95 % interval]): {', '.join(parts)}.")
    return lines


def footer(sweep: Sweep, cells: list[Cell]) -> list[str]:
    """What was measured, how it is judged, and on what budget."""
    diffs = [c for c in cells if c.difference]
    cells = [c for c in cells if not c.difference]
    filled = [c for c in cells if c.ours is not None]
    text = f"{len(filled)}/{len(cells)} cells measured"
    if sweep.signed:
        agree = [c for c in filled if c.sign_agrees is not None]
        judged = [c for c in filled if c.significant is not None]
        text += (f"; {sum(c.winning for c in filled)} winning by Eq. 1; {sum(c.significant for c in judged)} of "
                 f"{len(judged)} significant (95 % Student-t interval of the paired delta excludes 0; n = 1: "
                 f"the run's paired test, McNemar's exact test on images or a paired t on sequence accuracies, p < "
                 f"{ALPHA}), the rest n.s. (within noise: a sign on noise)")
        if sweep.paper:
            text += f"; sign agrees with the paper in {sum(c.sign_agrees for c in agree)}/{len(agree)}"
    replaced = sum(c.replaced for c in cells if c.metric == sweep.metrics[0])  # once per cell, not per metric
    if replaced:
        text += f"; {replaced} older run(s) replaced by newer runs of the same trial and seed"
    if sweep.marks == "best_second":
        text += "; **bold** best and <u>underlined</u> second per row"
    if diffs:
        judged = [c for c in diffs if c.significant is not None]
        text += (f"; {sweep.difference['label']}: {sum(c.ours is not None for c in diffs)} of {len(diffs)} rows "
                 f"paired, {sum(c.significant for c in judged)} of {len(judged)} significant (a single seed has "
                 "no interval)")
    na = [c for c in cells if c.na and c.metric == sweep.metrics[0]]
    if na:
        text += f"; {len(na)} cell(s) n/a on this model ({na[0].na})"
    chance = [c for c in cells if c.at_chance and c.metric == sweep.metrics[0]]
    if chance:
        text += (f"; {len(chance)} cell(s) rest on a dense network that ended at chance accuracy (marked dense at "
                 "chance): it did not learn, so they are no findings")
    needs = [c for c in [*cells, *diffs] if c.needs is not None]
    if needs:
        t = needs[0].target
        text += (f"; needs N: the seeds a cell's 95 % interval needs to be no wider than ±{t.effect:g} pp (the "
                 f"smallest effect of interest), from the sd of its pilot (seeds 0-{PILOT - 1}) alone, at most "
                 f"{t.max_seeds} (docs/design.md §8.2.1)")
    lines = [text + ".", *dense_reference(cells), f"Budget: {budget(cells)}."]
    if sweep.model:
        lines.append(f"Ours are {sweep.model}'s; the paper's values are its own network's (CIFAR ResNet).")
    return lines + ([sweep.note] if sweep.note else [])


def markdown(sweep: Sweep, cells: list[Cell]) -> str:
    """Ours beside the paper's value in every column (a sweep without paper values: ours alone)."""
    rows, columns, at = _layout(cells)
    head = [" / ".join(sweep.rows)]
    for col in columns:
        head += [f"{_col_label(sweep, col)} ours", f"{_col_label(sweep, col)} paper"] if sweep.paper else \
            [_col_label(sweep, col)]
    lines = [f"### {sweep.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out = [_row_label(sweep, row)]
        for col in columns:
            c = at.get((row, col))
            out.append(_marked(c, ours_text(sweep, c), "**{}**", "<u>{}</u>"))
            out += [paper_text(sweep, c)] if sweep.paper else []
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join([*lines, "", *footer(sweep, cells)]) + "\n"


CSV_COLUMNS = ["column", "metric", "mean", "std", "n", "ci_low", "ci_high", "p_value", "winning", "significant",
               "paper", "sign_agrees", "mark", "replaced", "needs"]


def _blank(v, fmt="{:.4f}") -> str:
    if v is None:
        return ""
    return str(int(v)) if isinstance(v, bool) else fmt.format(v)


def csv_text(sweep: Sweep, cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", *sweep.rows, *CSV_COLUMNS])
    for c in cells:
        s = c.ours
        stat = [MISSING, "", 0, "", ""] if s is None else [
            f"{s.mean:.4f}", _blank(s.std), s.n, _blank(s.ci_low), _blank(s.ci_high)]
        w.writerow([sweep.name, *c.row, c.column, c.metric, *stat, _blank(c.p_value, "{:.4g}"), _blank(c.winning),
                    _blank(c.significant), "" if c.paper is None else c.paper, _blank(c.sign_agrees), c.mark,
                    c.replaced, "" if c.needs is None else c.needs.seeds])
    return buf.getvalue()


def _tex(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("✓", r"\checkmark").replace(
        "✗", r"$\times$").replace("—", "--").replace("<u>", r"\underline{").replace("</u>", "}")


def latex(sweep: Sweep, cells: list[Cell]) -> str:
    rows, columns, at = _layout(cells)
    pair = bool(sweep.paper)  # ours and the paper's, or ours alone
    spec = "l" + ("rr" if pair else "r") * len(columns)
    head = [_tex(" / ".join(sweep.rows))] + [rf"\multicolumn{{2}}{{c}}{{{_tex(_col_label(sweep, c))}}}" if pair
                                              else _tex(_col_label(sweep, c)) for c in columns]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(sweep.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\",
             *([" & ".join([""] + ["ours", "paper"] * len(columns)) + r" \\"] if pair else []), r"\midrule"]
    for row in rows:
        out = [_tex(_row_label(sweep, row))]
        for col in columns:
            c = at.get((row, col))
            out += [_marked(c, _tex(ours_text(sweep, c)), r"\textbf{{{}}}", r"\underline{{{}}}"),
                    *([_tex(paper_text(sweep, c))] if pair else [])]
        lines.append(" & ".join(out) + r" \\")
    notes = [_tex(line.replace("**", "")) for line in footer(sweep, cells)]
    lines += [r"\bottomrule", r"\end{tabular}", *(rf"\par\footnotesize {n}" for n in notes), r"\end{table}"]
    return "\n".join(lines) + "\n"


# Per seed, what the report needs beyond the cell's own metric: CKA (claim C8), costs, and the
# training time and CO2 it totals.
SEED_KEYS = ("delta_pp", "accuracy", "dense_accuracy", "cka", "train_seconds", "dense_train_seconds", "co2_kg",
             "dense_co2_kg", "mcnemar_p", "p_value", "perplexity", "dense_perplexity")


def json_text(sweep: Sweep, cells: list[Cell]) -> str:
    """Every cell with its statistics and its runs' values per seed: what ``lottery.paper.report`` reads."""
    out = []
    for c in cells:
        s = c.ours
        seeds = {seed_of(r): {**{k: r["metrics"].get(k) for k in (*SEED_KEYS, c.metric)},
                              "dense_key": r["tags"].get("dense_key"), "blocks": r.get("blocks"),
                              "recipe": r["tags"].get("recipe")}
                 for r in c.runs}
        out.append({"row": list(c.row), "column": c.column, "metric": c.metric, "paper": c.paper,
                    "mean": s and s.mean, "std": s and s.std, "n": s.n if s else 0, "ci_low": s and s.ci_low,
                    "ci_high": s and s.ci_high, "p_value": c.p_value, "winning": c.winning,
                    "significant": c.significant, "sign_agrees": c.sign_agrees, "replaced": c.replaced,
                    "na": c.na, "at_chance": c.at_chance, "difference": c.difference,
                    "needs": c.needs and c.needs.seeds, "seeds": seeds})
    target = cells[0].target if cells else Target()
    return json.dumps({"table": sweep.name, "title": sweep.title, "rows": sweep.rows, "columns": sweep.columns,
                       "signed": sweep.signed,
                       "budget": budget(cells), "difference": sweep.difference, "effect": target.effect,
                       "max_seeds": target.max_seeds, "cells": out}, indent=1, default=float)


FORMATS = {"md": (markdown, "md"), "csv": (csv_text, "csv"), "latex": (latex, "tex"), "json": (json_text, "json")}
