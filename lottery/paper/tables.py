"""``python -m lottery table NAME [--profile P] [--data D] [--data-root DIR] [overrides]
[--format md|csv|latex] [--out DIR] [--xi X|std] [--effect PP] [--max-seeds N]``: build a paper table from MLflow.

It takes the same arguments as the sweep that ran the table (``lottery.experiment.sweeps``), so it knows the
exact identity of every cell's trials; it writes md, csv and tex (plus plots) to DIR, prints the
chosen format, and attaches the same files to the sweep's ``role=sweep`` run (replacing the
previous version). A cell without runs shows as missing, never as 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lottery.cli import ArgumentParser, entry
from lottery.config import TrackingConfig, TrialConfig
from lottery.errors import LotteryError
from lottery.experiment import seed_plan
from lottery.experiment.sweeps import (
    Setting,
    Sweep,
    add_sweep_arguments,
    compose_cells,
    designs,
    inapplicable,
    is_own_data,
    keys_of,
    load,
    parent,
)
from lottery.paper.cells import budget, build
from lottery.paper.plots import plot_curves, plot_figure3
from lottery.paper.render import FORMATS
from lottery.tracking import connection, runs


def fetch_runs(sweep: Sweep, with_blocks: bool = False) -> list[dict]:
    """Every finished ticket run of the sweep's experiment, as {"tags", "metrics", "params", "start"}."""
    import mlflow

    exp = mlflow.get_experiment_by_name(sweep.experiment)
    if exp is None:
        return []
    out = []
    for r in mlflow.search_runs([exp.experiment_id], output_format="list",
                                filter_string="tags.role = 'ticket' and attributes.status = 'FINISHED'"):
        rec = {"tags": dict(r.data.tags), "metrics": dict(r.data.metrics), "params": dict(r.data.params),
               "run_id": r.info.run_id, "start": r.info.start_time}
        if with_blocks:
            local = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="blocks.json")
            rec["blocks"] = json.loads(Path(local).read_text())
        out.append(rec)
    return out


def publish(sweep: Sweep, files: list[Path], profile: str, cfg: TrialConfig, tracking_uri: str | None, root: str,
            cells) -> str:
    """Attach the files to the sweep's ``role=sweep`` run (replacing the previous version), with
    the tags the report reads first."""
    experiment = connection.start(TrackingConfig(uri=tracking_uri, experiment=sweep.experiment), root)
    run_id = parent(sweep, profile, cfg, experiment)
    measured = sum(c.ours is not None for c in cells)
    runs.attach(run_id, files, {"table": sweep.name, "dataset": cfg.data.name, "budget": budget(cells),
                                "cells_measured": measured, "cells_missing": len(cells) - measured,
                                "table_built": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run_id


def write(sweep: Sweep, cells, out: Path) -> list[Path]:
    """The table in every format, and its plot, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for render, ext in FORMATS.values():
        path = out / f"{sweep.name}.{ext}"
        path.write_text(render(sweep, cells))
        files.append(path)
    plot = plot_figure3 if sweep.kind == "figure3" else plot_curves
    png = plot(sweep, cells, out / f"{sweep.name}.png")
    return files + ([png] if png else [])


@entry
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m lottery table", description=__doc__.split("\n\n")[0])
    add_sweep_arguments(p)
    p.add_argument("--format", choices=sorted(FORMATS), default="md", help="what to print")
    p.add_argument("--out", default=None, help="folder for md/csv/tex/png (default ROOT/tables/PROFILE, "
                                               "ROOT/tables/PROFILE-DATA on another data set than the sweep's own)")
    p.add_argument("--root", default=".lottery", help="paths.root of the runs: the embedded MLflow store, tables")
    p.add_argument("--xi", default="0", help="Eq. 1 margin in pp, or 'std' (std of dense accuracy over seeds)")
    p.add_argument("--tracking-uri", default=None)
    seed_plan.add_arguments(p)
    args = p.parse_intermixed_args(argv)
    import mlflow

    if args.xi != "std":
        try:
            float(args.xi)
        except ValueError:
            raise LotteryError(f"--xi={args.xi}: give a number of pp or 'std'") from None
    target = seed_plan.target_of(args)
    sweep = load(args.name, args.model)
    setting = Setting.of(args, sweep)
    composed = compose_cells(sweep, setting)
    found = designs(composed)
    mlflow.set_tracking_uri(connection.tracking_uri(TrackingConfig(uri=args.tracking_uri), args.root))
    finished = fetch_runs(sweep, with_blocks=sweep.kind == "figure3")
    cells = build(sweep, finished, keys_of(found), args.xi, inapplicable(found), target)
    # another data set's tables get a folder of their own
    dataset = composed[0][1].data.name
    folder = args.profile if is_own_data(dataset, args.profile, sweep) else f"{args.profile}-{dataset}"
    files = write(sweep, cells, Path(args.out or Path(args.root) / "tables" / folder))
    run_id = publish(sweep, files, args.profile, composed[0][1], args.tracking_uri, args.root, cells)
    print(FORMATS[args.format][0](sweep, cells))
    print(f"written: {', '.join(str(f) for f in files)} (MLflow run {run_id})")
    return 0
