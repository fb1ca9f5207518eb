"""The tables' plots: a metric against p per series (Tables 2 and 4), and Figure 3."""

from __future__ import annotations

from pathlib import Path

from lottery.experiment.sweeps import Sweep
from lottery.measure.plotting import pyplot, save
from lottery.measure.stats import summarize
from lottery.paper.cells import Cell


def plot_curves(sweep: Sweep, cells: list[Cell], path: Path) -> Path | None:
    """Metric against p, one line per series: mean over seeds, 95 % interval (else std) as error bars."""
    if not sweep.plot:
        return None
    x_key, s_key, metrics = sweep.plot["x"], sweep.plot["series"], sweep.plot["metrics"]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    keys = sweep.cells()
    for ax, metric in zip(axes[0], metrics):
        for series in dict.fromkeys(k[s_key] for k in keys):
            points = []
            for cell, c in zip(keys, cells[:: len(sweep.metrics)]):
                stat = summarize([r["metrics"].get(metric) for r in c.runs]) if cell[s_key] == series else None
                if stat is not None:
                    err = (stat.mean - stat.ci_low) if stat.ci_low is not None else (stat.std or 0.0)
                    points.append((float(cell[x_key]), stat.mean, err))
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=sweep.label(s_key, series))
        if metric.endswith("delta_pp"):
            ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("blocks removed (p)")
        ax.set_title(sweep.label("metrics", metric))
        ax.legend(fontsize=8)
    fig.suptitle(sweep.title, fontsize=9)
    save(fig, path)
    return path


def plot_figure3(sweep: Sweep, cells: list[Cell], path: Path) -> Path | None:
    """l1 score of every removable block against its normalised index, coloured by stage."""
    blocks = next((r["blocks"] for c in cells for r in c.runs if r.get("blocks")), None)
    if blocks is None:
        return None
    plt = pyplot()
    n = len(blocks["scores"])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for stage in sorted(set(blocks["stage"])):
        idx = [i for i in range(n) if blocks["stage"][i] == stage]
        ax.scatter([i / max(n - 1, 1) for i in idx], [blocks["scores"][i] for i in idx], label=f"stage {stage + 1}")
    ax.set_xlabel("block index (normalised)")
    ax.set_ylabel("l1 score (mean |w|)")
    ax.set_title(sweep.title, fontsize=9)
    ax.legend()
    save(fig, path)
    return path
