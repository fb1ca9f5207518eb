"""``python -m lottery report [--profile P]`` (``make report``): the reproduction on one page.

Built from MLflow alone: the newest table attached to each paper table's ``role=sweep`` run of
the profile (its ``cells.json``, markdown and plot) gives the tables, and ``lottery.paper.claims``
judges the paper's claims C1-C9 from their cells. Writes ``ROOT/report/PROFILE/index.html``
(standing alone: plots inlined, no JavaScript) and ``report.md``, and attaches both to one
``role=report`` run, replaced on a rebuild.
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import torch
import yaml

from lottery.cli import ArgumentParser, entry
from lottery.config import CONF, TrackingConfig
from lottery.errors import LotteryError
from lottery.experiment.sweeps import Setting, available, configs, data_name, default_data, is_own_data, load
from lottery.paper.claims import judge
from lottery.tracking import connection, provenance, runs

EXPERIMENT = "report"
PAPER_EPOCHS = 200
INSTALLED = "lottery-install.txt"  # written into the venv by `make install`: the constraints it used


def fetch_tables(profile: str, model: str | None = None, data: str | None = None) -> dict[str, dict]:
    """The newest table of each paper table for the profile, model and data (attached to its
    sweep's run; ``model``: the MODEL the sweeps ran on, None for their own; ``data``: the data
    config, None for each sweep's own): its cells, markdown, plot, status. A table of another data
    set is never taken for the paper's."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out: dict[str, dict] = {}
    names: dict[str | None, str] = {}  # a data config (None: the config's default) -> the data set it names
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.role = 'sweep' and tags.profile = '{profile}' and "
                                            f"tags.model = '{model or 'default'}'")
    for run in sorted(runs, key=lambda r: r.data.tags.get("table_built", ""), reverse=True):
        name = run.data.tags.get("table")
        if name in out or name not in available():
            continue
        wanted = data or default_data(profile, load(name))
        if wanted not in names:
            names[wanted] = data_name(Setting(profile, wanted))
        if run.data.tags.get("dataset") != names[wanted]:
            continue  # another data set's table, or one built before tables named their data set
        files = {p.path: p for p in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        if f"{name}.json" not in files:
            continue  # a table built before cells.json existed
        get = lambda f: Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f))  # noqa: E731
        out[name] = {**json.loads(get(f"{name}.json").read_text()), "md": get(f"{name}.md").read_text(),
                     "png": get(f"{name}.png").read_bytes() if f"{name}.png" in files else None,
                     "failed": _failed(run.info.experiment_id, profile)}
    return out


def _failed(experiment_id: str, profile: str) -> int:
    """Trials of the profile whose runs failed or were killed and that have not finished since."""
    import mlflow

    runs = mlflow.search_runs([experiment_id], output_format="list",
                              filter_string=f"tags.role = 'ticket' and tags.profile = '{profile}'")
    done = {r.data.tags.get("config_key") for r in runs if r.info.status == "FINISHED"}
    return len({r.data.tags.get("config_key") for r in runs
                if r.info.status in ("FAILED", "KILLED") and r.data.tags.get("config_key") not in done})


def trials(table: dict) -> dict[str, int]:
    """Finished runs (one per seed of each measured cell), cells missing, runs failed."""
    first = table["cells"][0]["metric"] if table["cells"] else None
    cells = [c for c in table["cells"] if c["metric"] == first]
    return {"finished": sum(c["n"] for c in cells), "missing cells": sum(not c["n"] for c in cells),
            "failed": table["failed"]}


def environment(tables: dict) -> dict[str, str]:
    """Versions, commit, date, the recipe each table's runs trained with, and the training time and
    CO2 of every run the tables include."""
    seconds = co2 = 0.0
    dense: dict[str, tuple[float, float]] = {}
    recipes: dict[str, set[str]] = {}  # recipe -> the tables trained with it
    for name, t in tables.items():
        for c in t["cells"]:
            for s in c["seeds"].values():
                recipes.setdefault(s.get("recipe") or "unrecorded (a run from before recipes were tagged)",
                                   set()).add(name)
                seconds += s.get("train_seconds") or 0.0
                co2 += s.get("co2_kg") or 0.0
                dense[s.get("dense_key")] = (s.get("dense_train_seconds") or 0.0, s.get("dense_co2_kg") or 0.0)
    seconds += sum(v[0] for v in dense.values())
    co2 += sum(v[1] for v in dense.values())
    installed = Path(sys.prefix) / INSTALLED
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "lottery": importlib.metadata.version("lottery"), "commit": (provenance.commit() or "unknown")[:12],
            "installed from": installed.read_text().strip() if installed.exists() else "unknown (not `make install`)",
            **{f"recipe of {', '.join(sorted(names))}": recipe for recipe, names in sorted(recipes.items())},
            "training time of every run included": f"{seconds / 3600:.2f} h (dense networks counted once: {len(dense)})",
            "CO2 of every run included": f"{co2:.4f} kg (codecarbon; see each run's power_source)"}


# --------------------------------------------------------------------------------------------
# Rendering


def budget_of(profile: str, data: str | None = None) -> tuple[str, str]:
    """What a profile's budget can judge: ``paper``, ``reduced`` (fewer epochs or images than the
    paper's recipe) or ``wiring`` (synthetic data), and the banner that says so; ``data``: a data
    config other than the profile's own, which the banner names first."""
    train = yaml.safe_load((CONF / "profile" / f"{profile}.yaml").read_text()).get("train", {})
    if (data or default_data(profile)) == "synthetic":
        return "wiring", (f"**Wiring check, not findings.** The {profile} profile trains on synthetic data for "
                          f"{train.get('epochs')} epochs: each verdict says the pipeline computes one, not whether the "
                          "paper's claim holds. Run `make tables PROFILE=quick` (CPU) or the paper profile (GPU).")
    if data:
        return "reduced", (f"**On `data={data}`.** The tables ran on this data set, at the {profile} profile's budget "
                           "for it (each table's budget line says it): unless it holds CIFAR-10, the verdicts answer "
                           "the paper's question on other data, not the paper's recipe at its scale.")
    if train.get("epochs", PAPER_EPOCHS) < PAPER_EPOCHS:
        return "reduced", (f"**Reduced budget.** The {profile} profile trains {train.get('epochs')} epochs (the paper: "
                           f"{PAPER_EPOCHS}) on a subset of the images: the verdicts judge this budget, not the paper's "
                           "recipe.")
    return "paper", ""


def claims_md(claims: list[dict], budget: str = "paper") -> str:
    """The claims' verdicts, then for each inconclusive one whether more seeds could decide it, and
    what its intervals settle already."""
    lines = ["| claim | verdict | agree / disagree / inconclusive (of cells) | rests on |", "|---|---|---|---|"]
    for c in claims:
        counts = f"{c['agree']} / {c['disagree']} / {c['inconclusive']} (of {c['cells']})" if c["cells"] else "—"
        verdict = f"**{c['verdict']}**" + (" (wiring check)" if budget == "wiring" and c["verdict"] != "not run" else "")
        lines.append(f"| {c['id']}: {c['claim']} | {verdict} | {counts} | {c['table']} |")
    undecided = [c for c in claims if c["more_seeds"]]
    if undecided:
        lines += ["", "Could more seeds decide the inconclusive claims? (each cell's need: the seeds its 95 % interval "
                      "needs to be no wider than the smallest effect of interest; docs/design.md §8.2.1)", "",
                  *(f"- {c['id']}: {c['more_seeds']}" + (f". What its intervals settle: {c['ruled_out']}"
                                                          if c["ruled_out"] else "") for c in undecided)]
    return "\n".join(lines)


def markdown(profile: str, claims: list[dict], tables: dict, env: dict, model: str | None = None,
             data: str | None = None) -> str:
    on = "".join(f", {x}" for x in (model, data) if x)
    budget, banner = budget_of(profile, data)
    sections = list(dict.fromkeys(c["section"] for c in claims))  # the paper's claims first, then beyond it
    parts = [f"# lottery: the reproduction at a glance ({profile} profile{on})", "", *([banner, ""] if banner else [])]
    for k, section in enumerate(sections):
        parts += [*(["## " + section, ""] if k else []), claims_md([c for c in claims if c["section"] == section],
                                                                   budget), ""]
    for name in sorted(available(), key=lambda n: (n.startswith("figure"), n)):  # the paper's order
        t = tables.get(name)
        if t is None:
            sweep = load(name)
            run = (f"make {name} PROFILE={profile}" + (f" DATA={data}" if data else "")
                   + (f" MODEL={model}" if model and "model" not in sweep.keys else ""))
            parts += [f"### {sweep.title}", "", f"not run: `{run}`", ""]
            continue
        counts = ", ".join(f"{v} {k}" for k, v in trials(t).items())
        parts += [t["md"], f"Trials: {counts}.", ""] + ([f"![{name}]({name}.png)", ""] if t["png"] else [])
    parts += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text).replace("&lt;u&gt;", "<u>").replace("&lt;/u&gt;", "</u>")
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def md_to_html(md: str) -> str:
    """The subset of markdown the report writes: headings, pipe tables, images, lists, paragraphs."""
    out, rows = [], []

    def flush():
        if rows:
            head, *body = [r for r in rows if not set(r) <= set("|-: ")]
            cell = lambda r, tag: "".join(f"<{tag}>{_inline(c.strip())}</{tag}>" for c in r.strip("|").split("|"))  # noqa: E731
            out.append("<table><tr>" + cell(head, "th") + "</tr>" + "".join(f"<tr>{cell(r, 'td')}</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        if m := re.match(r"(#+) (.*)", line):
            out.append(f"<h{len(m[1])}>{_inline(m[2])}</h{len(m[1])}>")
        elif m := re.match(r"!\[(.*)\]\((.*)\)", line):
            out.append(f'<img alt="{html.escape(m[1])}" src="{m[2]}">')
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%}"
         "th{background:#f3f3f3}img{max-width:100%}")


def page(md: str, tables: dict) -> str:
    body = md_to_html(md)
    for name, t in tables.items():
        if t["png"]:
            body = body.replace(f'src="{name}.png"', f'src="data:image/png;base64,{base64.b64encode(t["png"]).decode()}"')
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lottery report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def publish(profile: str, model: str | None, data: str | None, files: list[Path], root: str) -> str:
    """The profile's (and model's, data's) one ``role=report`` run, its artifacts replaced on every rebuild."""
    experiment = connection.start(TrackingConfig(experiment=EXPERIMENT), root)
    name = "-".join(["report", profile, *(x for x in (model, data) if x)])
    tags = {"role": "report", "profile": profile, "model": model or "default", **({"data": data} if data else {})}
    run_id = runs.find_or_create(experiment, name, tags)
    runs.attach(run_id, files, {})
    return run_id


@entry
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m lottery report", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="quick", help=f"one of: {', '.join(configs('profile'))} (default quick)")
    p.add_argument("--root", default=".lottery", help="paths.root: the embedded MLflow store; report goes below it")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--model", default=None,
                   help=f"the model config the sweeps ran on (make table2 MODEL=...), one of: "
                        f"{', '.join(configs('model'))}; default: their own")
    p.add_argument("--data", default=None,
                   help=f"the data config the sweeps ran on (make table2 DATA=...), one of: "
                        f"{', '.join(configs('data'))}; default: their own")
    args = p.parse_args(argv)
    import mlflow

    mlflow.set_tracking_uri(connection.tracking_uri(TrackingConfig(uri=args.tracking_uri), args.root))
    profiles = configs("profile")
    if args.profile not in profiles:
        built = sorted({r.data.tags.get("profile") for r in mlflow.search_runs(
            search_all_experiments=True, output_format="list", filter_string="tags.role = 'sweep'")
            if r.data.tags.get("table")})
        raise LotteryError(f"unknown profile '{args.profile}': profiles with tables in this store: "
                           f"{', '.join(built) or 'none yet'} (profiles: {', '.join(profiles)})")
    data = args.data  # a data config that does not exist: one line (it does not compose), before any work
    if data and is_own_data(data_name(Setting(args.profile, data)), args.profile):
        data = None  # the profile's own data, named: each sweep's own
    tables = fetch_tables(args.profile, args.model, data)
    claims = judge(tables)
    md = markdown(args.profile, claims, tables, environment(tables), args.model, data)
    if not tables:
        on = f" DATA={data}" if data else ""
        offline = "" if data else " (add `DATA=imagefolder DATA_ROOT=DIR` offline)"
        md = md.replace("\n\n", f"\n\nNo table of the {args.profile} profile in MLflow yet: run "
                                f"`make tables PROFILE={args.profile}{on}`{offline}, then `make report{on}` again.\n\n", 1)
    out = Path(args.root) / "report" / "-".join(x for x in (args.profile, args.model, data) if x)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md)
    (out / "index.html").write_text(page(md, tables))
    run_id = publish(args.profile, args.model, data, [out / "index.html", out / "report.md"], args.root)
    print(claims_md(claims, budget_of(args.profile, data)[0]))
    print(f"written: {out / 'index.html'}, {out / 'report.md'} (MLflow run {run_id})")
    return 0
