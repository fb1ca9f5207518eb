"""Build a paper table from MLflow: our value (mean +- std over seeds) beside the paper's.

``python -m lottery.tables NAME [--format md|csv|latex] [--out DIR] [--profile P] [--xi X|std]``
reads the runs of the sweep's experiment, finds each cell by the overrides the sweep set,
aggregates seeds, and writes md, csv and tex (plus plots) to DIR, printing the chosen format.
The same files are logged as artifacts of one ``role=table`` run. A cell without runs shows as
missing, never as 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from lottery.errors import LotteryError
from lottery.sweeps import Sweep, available, load

MISSING = "missing"


@dataclass
class Stat:
    mean: float
    std: float | None  # None with a single seed
    n: int


@dataclass
class Cell:
    row: tuple[str, ...]
    column: str
    metric: str
    ours: Stat | None
    paper: float | None
    winning: bool | None = None  # Eq. 1, for signed tables
    sign_agrees: bool | None = None
    mark: str = ""  # best | second


def aggregate(values: list[float]) -> Stat | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def _column_of(sweep: Sweep, cell: dict[str, str], metric: str) -> str:
    if sweep.columns == "metrics":
        return metric
    return cell[sweep.columns] if sweep.columns else metric


def runs_of(cell: dict[str, str], runs: list[dict]) -> list[dict]:
    """The runs a sweep launched for one cell, found by the overrides tagged on them."""
    return [r for r in runs if all(r["tags"].get(f"override.{k}") == v for k, v in cell.items())]


def build(sweep: Sweep, runs: list[dict], xi="0") -> list[Cell]:
    """Cells of the table from run records {"tags": {...}, "metrics": {...}} (finished tickets)."""
    cells = []
    for cell in sweep.cells():
        matching = runs_of(cell, runs)
        by_seed = {}
        for r in matching:  # one run per seed: the latest
            by_seed[r["tags"].get("override.seed", r["tags"].get("seed", "0"))] = r
        chosen = list(by_seed.values())
        row = tuple(cell[k] for k in sweep.rows)
        for metric in sweep.metrics:
            column = _column_of(sweep, cell, metric)
            ours = aggregate([r["metrics"].get(metric) for r in chosen])
            paper = sweep.paper.get("|".join(row), {}).get(column)
            c = Cell(row, column, metric, ours, paper)
            if sweep.signed and ours is not None:
                if xi == "std":
                    dense = aggregate([r["metrics"].get("dense_accuracy") for r in chosen])
                    margin = dense.std or 0.0 if dense else 0.0
                else:
                    margin = float(xi)
                c.winning = ours.mean + margin >= 0
                c.sign_agrees = None if paper is None else (ours.mean >= 0) == (paper >= 0)
            cells.append(c)
    if sweep.marks == "best_second":
        for row in {c.row for c in cells}:
            ranked = sorted((c for c in cells if c.row == row and c.ours), key=lambda c: -c.ours.mean)
            for c, mark in zip(ranked, ("best", "second")):
                c.mark = mark
    return cells


# --------------------------------------------------------------------------------------------
# Rendering


def _layout(sweep: Sweep, cells: list[Cell]):
    rows = list(dict.fromkeys(c.row for c in cells))
    columns = list(dict.fromkeys(c.column for c in cells))
    at = {(c.row, c.column): c for c in cells}
    return rows, columns, at


def _row_label(sweep: Sweep, row) -> str:
    return " ".join(sweep.label(k, v) for k, v in zip(sweep.rows, row))


def _col_label(sweep: Sweep, column: str) -> str:
    return sweep.label("metrics" if sweep.columns in ("metrics", None) else sweep.columns, column)


def _number(sweep: Sweep, value: float) -> str:
    return f"{value:+.2f}" if sweep.signed else f"{value:.2f}"


def ours_text(sweep: Sweep, c: Cell | None) -> str:
    if c is None or c.ours is None:
        return MISSING
    text = ("(+) " if c.winning else "(-) ") if sweep.signed else ""
    text += _number(sweep, c.ours.mean)
    if c.ours.std is not None:
        text += f" ± {c.ours.std:.2f}"
    return f"{text} (n={c.ours.n})"


def paper_text(sweep: Sweep, c: Cell | None) -> str:
    if c is None or c.paper is None:
        return "—"
    text = (("(+) " if c.paper >= 0 else "(-) ") if sweep.signed else "") + _number(sweep, c.paper)
    if c.sign_agrees is not None:
        text += " ✓" if c.sign_agrees else " ✗"
    return text


def markdown(sweep: Sweep, cells: list[Cell]) -> str:
    rows, columns, at = _layout(sweep, cells)
    head = [" / ".join(sweep.rows)]
    for col in columns:
        head += [f"{_col_label(sweep, col)} ours", f"{_col_label(sweep, col)} paper"]
    lines = [f"### {sweep.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out = [_row_label(sweep, row)]
        for col in columns:
            c = at.get((row, col))
            text = ours_text(sweep, c)
            if c is not None and c.mark == "best":
                text = f"**{text}**"
            elif c is not None and c.mark == "second":
                text = f"<u>{text}</u>"
            out += [text, paper_text(sweep, c)]
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines.append(summary(sweep, cells))
    if sweep.note:
        lines.append(sweep.note)
    return "\n".join(lines) + "\n"


def summary(sweep: Sweep, cells: list[Cell]) -> str:
    filled = [c for c in cells if c.ours is not None]
    text = f"{len(filled)}/{len(cells)} cells measured"
    if sweep.signed:
        agree = [c for c in filled if c.sign_agrees is not None]
        text += f"; {sum(c.winning for c in filled)} winning; sign agrees with the paper in " \
                f"{sum(c.sign_agrees for c in agree)}/{len(agree)}"
    if sweep.marks == "best_second":
        text += "; **bold** best and <u>underlined</u> second per row"
    return text + "."


def csv_text(sweep: Sweep, cells: list[Cell]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", *sweep.rows, "column", "metric", "mean", "std", "n", "paper", "winning",
                "sign_agrees", "mark"])
    for c in cells:
        s = c.ours
        w.writerow([sweep.name, *c.row, c.column, c.metric, MISSING if s is None else f"{s.mean:.4f}",
                    "" if s is None or s.std is None else f"{s.std:.4f}", 0 if s is None else s.n,
                    "" if c.paper is None else c.paper, "" if c.winning is None else int(c.winning),
                    "" if c.sign_agrees is None else int(c.sign_agrees), c.mark])
    return buf.getvalue()


def _tex(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("✓", r"\checkmark").replace(
        "✗", r"$\times$").replace("—", "--")


def latex(sweep: Sweep, cells: list[Cell]) -> str:
    rows, columns, at = _layout(sweep, cells)
    spec = "l" + "rr" * len(columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(sweep.title)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule",
             " & ".join([_tex(" / ".join(sweep.rows))] + [rf"\multicolumn{{2}}{{c}}{{{_tex(_col_label(sweep, c))}}}"
                                                           for c in columns]) + r" \\",
             " & ".join([""] + ["ours", "paper"] * len(columns)) + r" \\", r"\midrule"]
    for row in rows:
        out = [_tex(_row_label(sweep, row))]
        for col in columns:
            c = at.get((row, col))
            text = _tex(ours_text(sweep, c))
            if c is not None and c.mark == "best":
                text = rf"\textbf{{{text}}}"
            elif c is not None and c.mark == "second":
                text = rf"\underline{{{text}}}"
            out += [text, _tex(paper_text(sweep, c))]
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


FORMATS = {"md": (markdown, "md"), "csv": (csv_text, "csv"), "latex": (latex, "tex")}


# --------------------------------------------------------------------------------------------
# Plots


def plot_curves(sweep: Sweep, runs: list[dict], path: Path) -> Path | None:
    """Metric against p, one line per series (mean over seeds, std as error bars)."""
    if not sweep.plot:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, s_key, metrics = sweep.plot["x"], sweep.plot["series"], sweep.plot["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for series in dict.fromkeys(c[s_key] for c in sweep.cells()):
            xs, ys, es = [], [], []
            for cell in sweep.cells():
                if cell[s_key] != series:
                    continue
                stat = aggregate([r["metrics"].get(metric) for r in runs_of(cell, runs)])
                if stat is not None:
                    xs.append(float(cell[x_key]))
                    ys.append(stat.mean)
                    es.append(stat.std or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=sweep.label(s_key, series))
        if metric.endswith("delta_pp"):
            ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("blocks removed (p)")
        ax.set_title(sweep.label("metrics", metric))
        ax.legend(fontsize=8)
    fig.suptitle(sweep.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_figure3(sweep: Sweep, runs: list[dict], path: Path) -> Path | None:
    """l1 score of every removable block against its normalised index, coloured by stage."""
    blocks = next((r["blocks"] for r in runs if r.get("blocks")), None)
    if blocks is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(blocks["scores"])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for stage in sorted(set(blocks["stage"])):
        idx = [i for i in range(n) if blocks["stage"][i] == stage]
        ax.scatter([i / max(n - 1, 1) for i in idx], [blocks["scores"][i] for i in idx], label=f"stage {stage + 1}")
    ax.set_xlabel("block index (normalised)")
    ax.set_ylabel("l1 score (mean |w|)")
    ax.set_title(sweep.title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# MLflow


def fetch_runs(sweep: Sweep, profile: str | None, with_blocks: bool = False) -> list[dict]:
    import mlflow

    exp = mlflow.get_experiment_by_name(sweep.experiment)
    if exp is None:
        return []
    query = "tags.role = 'ticket' and attributes.status = 'FINISHED'"
    if profile:
        query += f" and tags.profile = '{profile}'"
    out = []
    for r in mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list",
                                order_by=["attributes.start_time ASC"]):
        rec = {"tags": dict(r.data.tags), "metrics": dict(r.data.metrics), "run_id": r.info.run_id}
        if with_blocks:
            local = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="blocks.json")
            rec["blocks"] = json.loads(Path(local).read_text())
        out.append(rec)
    return out


def publish(sweep: Sweep, files: list[Path], profile: str | None) -> str:
    import mlflow

    from lottery.tracking import LOCAL_ROOT

    exp = mlflow.get_experiment_by_name(sweep.experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(
        sweep.experiment, artifact_location=(LOCAL_ROOT / "mlartifacts").resolve().as_uri())
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{sweep.name}-table-{profile or 'all'}") as run:
        mlflow.set_tags({"role": "table", "table": sweep.name, "profile": profile or "all"})
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lottery.tables", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help=f"one of: {', '.join(available())}")
    p.add_argument("--format", choices=sorted(FORMATS), default="md", help="what to print")
    p.add_argument("--out", default=None, help="folder for md/csv/tex/png (default .lottery/tables/PROFILE)")
    p.add_argument("--profile", default=None, help="only runs of this profile (default: all)")
    p.add_argument("--xi", default="0", help="Eq. 1 margin in pp, or 'std' (std of dense accuracy over seeds)")
    p.add_argument("--tracking-uri", default=None)
    args = p.parse_args(argv)
    try:
        import mlflow

        from lottery.config import TrackingConfig
        from lottery.tracking import tracking_uri

        sweep = load(args.name)
        if args.xi != "std":
            float(args.xi)
        mlflow.set_tracking_uri(tracking_uri(TrackingConfig(uri=args.tracking_uri)))
        runs = fetch_runs(sweep, args.profile, with_blocks=sweep.kind == "figure3")
    except ValueError:
        print(f"lottery: error: --xi={args.xi}: give a number of pp or 'std'", file=sys.stderr)
        return 2
    except LotteryError as e:
        print(f"lottery: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f".lottery/tables/{args.profile or 'all'}")
    out.mkdir(parents=True, exist_ok=True)
    cells = build(sweep, runs, args.xi)
    files = []
    for render, ext in FORMATS.values():
        path = out / f"{sweep.name}.{ext}"
        path.write_text(render(sweep, cells))
        files.append(path)
    plot = plot_figure3 if sweep.kind == "figure3" else plot_curves
    png = plot(sweep, runs, out / f"{sweep.name}.png")
    if png:
        files.append(png)
    run_id = publish(sweep, files, args.profile)
    print(FORMATS[args.format][0](sweep, cells))
    print(f"written: {', '.join(str(f) for f in files)} (MLflow run {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
