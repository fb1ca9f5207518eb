"""Paper artefacts as sweep files (``sweeps/<name>.yaml``): the grid to run and the table layout.

One file per table is the single source of truth: ``main`` (``python -m lottery sweep NAME``)
turns its grids into Hydra multiruns (``python -m lottery -m ...``), and ``lottery.paper.tables``
reads the same file to lay the results out beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lottery.cli import ArgumentParser, entry
from lottery.config import CONF, TrialConfig, choice, register
from lottery.errors import LotteryError, unknown
from lottery.experiment import estimate, seed_plan
from lottery.experiment.design import Design, derive
from lottery.experiment.identity import DENSE_READS
from lottery.tracking import connection, runs
from lottery.training import data
from lottery.training.devices import pick_device, precision

SWEEPS = CONF.parent / "sweeps"


@dataclass
class Sweep:
    name: str
    title: str
    overrides: list[str]
    grids: list[dict[str, list]]
    rows: list[str]
    columns: str | None  # a grid key, "metrics" (one column per metric) or None (one column)
    metrics: list[str]
    labels: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)  # "row|values" -> {column: value}
    marks: str | None = None  # best_second: bold the best and underline the second of a row
    signed: bool = True  # cells are ticket-minus-dense deltas, marked (+) winning or (-) losing
    plot: dict | None = None
    kind: str = "table"
    note: str = ""
    experiment: str = ""  # MLflow experiment of its runs; default: the sweep's name
    difference: dict | None = None  # {of, minus, label}: a column of the paired difference of two columns' cells
    model: str | None = None  # the model config it runs on instead of its own (MODEL=...), not read from the file
    data: dict = field(default_factory=dict)  # profile -> the data config its cells run on unless told (DATA=...)

    def __post_init__(self):
        self.experiment = self.experiment or self.name
        own = next((o.split("=", 1)[1] for o in self.overrides if o.startswith("model=")), "the network")
        self.title = self.title.replace("{model}", self.model or own)

    @property
    def keys(self) -> list[str]:
        """The swept keys (their values identify a cell)."""
        return list(self.grids[0])

    def cells(self) -> list[dict[str, str]]:
        """Every combination of swept values, in file order, as strings."""
        return [cell for grid in self.grids for cell in combinations(grid)]

    def label(self, key: str, value: str) -> str:
        return str(self.labels.get(key, {}).get(value, value))


def combinations(grid: dict[str, list]) -> list[dict[str, str]]:
    """Every combination of one grid's values, in file order, as strings."""
    return [{k: str(v) for k, v in zip(grid, combo)} for combo in itertools.product(*grid.values())]


def available() -> list[str]:
    return sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def configs(group: str) -> list[str]:
    """The options of a config group (``conf/GROUP/*.yaml``)."""
    return sorted(f.stem for f in (CONF / group).glob("*.yaml"))


def own_model_sweeps() -> list[str]:
    """The sweeps that run on one model (their grids do not sweep ``model``): those MODEL applies to."""
    grids = {n: yaml.safe_load((SWEEPS / f"{n}.yaml").read_text())["grids"] for n in available()}
    return [n for n, g in grids.items() if not any("model" in grid for grid in g)]


def load(name: str, model: str | None = None) -> Sweep:
    """A sweep file, on its own model or, with ``model``, on that model config (``make table2
    MODEL=resnet18``): its ``model=`` override replaced, so its cells are that model's alone."""
    path = SWEEPS / f"{name}.yaml"
    if not path.exists():
        raise unknown("sweep", name, available())
    raw = yaml.safe_load(path.read_text())
    raw["paper"] = {str(r): {str(c): v for c, v in cols.items()} for r, cols in (raw.get("paper") or {}).items()}
    raw["labels"] = {k: {str(a): b for a, b in v.items()} for k, v in (raw.get("labels") or {}).items()}
    fields = {f.name for f in dataclasses.fields(Sweep)} - {"name", "model"}
    required = {f.name for f in dataclasses.fields(Sweep) if f.default is f.default_factory is dataclasses.MISSING}
    if set(raw) - fields or required - {"name"} - set(raw):
        raise LotteryError(f"sweeps/{name}.yaml: unknown keys {sorted(set(raw) - fields)}, missing keys "
                           f"{sorted(required - {'name'} - set(raw))}; a sweep file has {sorted(fields)}")
    if model is not None:
        if model not in configs("model"):
            raise unknown("model", model, configs("model"))
        if any("model" in g for g in raw["grids"]):
            models = sorted({str(m) for g in raw["grids"] for m in g.get("model", [])})
            raise LotteryError(f"{name} sweeps its own models ({', '.join(models)}); MODEL applies to the sweeps "
                               f"of one model ({', '.join(own_model_sweeps())})")
        raw["overrides"] = [o for o in raw["overrides"] if not o.startswith("model=")] + [f"model={model}"]
    sweep = Sweep(name=name, model=model, **raw)
    if any(list(g) != sweep.keys for g in sweep.grids):
        raise LotteryError(f"sweeps/{name}.yaml: every grid must sweep the same keys {sweep.keys}")
    return sweep


def launcher_overrides(jobs: int, launcher: str | None) -> list[str]:
    """Hydra launcher overrides: N trials at once on this box (joblib), or another launcher."""
    if launcher:
        return [f"hydra/launcher={launcher}"]
    if jobs > 1:
        threads = max(1, (os.cpu_count() or jobs) // jobs)
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", f"threads={threads}", f"jobs={jobs}"]
    return []


def default_data(profile: str, sweep: Sweep | None = None) -> str | None:
    """The data a profile runs on unless told: the sweep's own for the profile (a language-model
    sweep's text), else synthetic for smoke, else the config's (CIFAR-10)."""
    if sweep is not None and profile in sweep.data:
        return sweep.data[profile]
    return "synthetic" if profile == "smoke" else None


@dataclass(frozen=True)
class Setting:
    """What names a sweep's trials besides its file, the same for running them and for building
    their table: the profile, the data, and further overrides for every trial."""

    profile: str
    data: str | None = None  # a data config; default: synthetic for smoke, else cifar10
    data_root: str | None = None
    extra: tuple[str, ...] = ()

    @classmethod
    def of(cls, args, sweep: Sweep) -> "Setting":
        return cls(args.profile, args.data or default_data(args.profile, sweep), args.data_root, tuple(args.extra))

    def overrides(self) -> list[str]:
        data = self.data or default_data(self.profile)
        return [f"profile={self.profile}", *([f"data={data}"] if data else []),
                *([f"data.root={self.data_root}"] if self.data_root else [])]


def commands(sweep: Sweep, setting: Setting, seeds: int | Sequence[Sequence[int]], jobs: int = 1,
             launcher: str | None = None) -> list[list[str]]:
    """The ``python -m lottery -m`` commands of the sweep's trials: ``seeds`` is a count for every
    cell, or each cell's own seeds (of ``sweep.cells()``, in order; none: nothing to run, as for a
    finished cell or one the model cannot run). Per grid, the cells that run the same seeds make
    as few multiruns as hold exactly them: one per grid when every cell runs the same."""
    count = len(sweep.cells())
    lists = iter([tuple(range(seeds))] * count if isinstance(seeds, int) else [tuple(s) for s in seeds])
    profile, *data = setting.overrides()
    out = []
    for grid in sweep.grids:
        mine = [(cell, next(lists)) for cell in combinations(grid)]
        for group in dict.fromkeys(seeds for _, seeds in mine if seeds):
            for product in products([c for c, s in mine if s == group]):
                swept = [f"{k}={','.join(values)}" for k, values in product.items()]
                out.append([sys.executable, "-m", "lottery", "-m", *sweep.overrides, *swept, profile,
                            f"seed={','.join(str(s) for s in group)}", f"tracking.experiment={sweep.experiment}",
                            *launcher_overrides(jobs, launcher), *data, *setting.extra])
    return out


def products(cells: list[dict[str, str]]) -> list[dict[str, list[str]]]:
    """Distinct cells as Cartesian products of their values (a multirun each) that hold exactly
    them: whole where they fill their product, else split on the first key that varies, the parts
    that agree on every other key joined again."""
    values = {k: list(dict.fromkeys(c[k] for c in cells)) for k in cells[0]}
    if math.prod(map(len, values.values())) == len(cells):
        return [values]
    key = next(k for k, v in values.items() if len(v) > 1)
    out: list[dict[str, list[str]]] = []
    for value in values[key]:
        for part in products([c for c in cells if c[key] == value]):
            same = next((p for p in out if all(p[k] == part[k] for k in part if k != key)), None)
            if same is None:
                out.append(part)
            else:
                same[key] += part[key]
    return out


def compose_cells(sweep: Sweep, setting: Setting) -> list[tuple[dict, TrialConfig]]:
    """Each cell of the sweep with the config of its trial (seed 0), composed exactly as the
    sweep's multirun composes it."""
    register()
    GlobalHydra.instance().clear()
    out = []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for cell in sweep.cells():
            out.append((cell, compose(config_name="config", overrides=[
                *sweep.overrides, *(f"{k}={v}" for k, v in cell.items()), *setting.overrides(),
                f"tracking.experiment={sweep.experiment}",
                *(o for o in setting.extra if not o.lstrip("+~").startswith("hydra"))])))
    return out


def data_name(setting: Setting) -> str:
    """The name of the data config the setting's trials run on: its own, or the config's default
    (a table and the report tell data sets apart by it)."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=setting.overrides()).data.name


def is_own_data(name: str, profile: str, sweep: Sweep | None = None) -> bool:
    """Whether the data set ``name`` is the one the profile runs on unless told (the sweep's own):
    a table and the report keep any other data set's results apart by this test."""
    return name == data_name(Setting(profile, default_data(profile, sweep)))


def designs(cells: list[tuple[dict, TrialConfig]]) -> list[Design | str]:
    """Each composed cell's design, or why its trial cannot run (its one-line validation error:
    e.g. a density above what another model can lose). The data, which every cell shares, are
    checked first: a data set that cannot be read is one line for the whole sweep."""
    data.check(cells[0][1].data)
    out: list[Design | str] = []
    for _, cfg in cells:
        try:
            out.append(derive(cfg))
        except LotteryError as e:
            out.append(str(e))
    return out


def inapplicable(found: list[Design | str]) -> list[str | None]:
    """Why each cell's trial cannot run, or None."""
    return [d if isinstance(d, str) else None for d in found]


def keys_of(found: list[Design | str]) -> list[str | None]:
    """The ``cell_key`` of each cell that can run (None for the others): the tables accept a run
    into a cell only on this key."""
    return [None if isinstance(d, str) else d.keys["cell_key"] for d in found]


def parent(sweep: Sweep, profile: str, cfg: TrialConfig, experiment: str, create: bool = True) -> str | None:
    """The run id of the sweep's one ``role=sweep`` run for this profile and data, found again by
    its tags on every invocation (created when missing, unless ``create`` is False): the trials sit
    under it, and the table builder attaches the table to it."""
    tags = {"role": "sweep", "sweep": sweep.name, "profile": profile,
            "data": data.digest(data.fingerprint(cfg.data)), "model": sweep.model or "default"}
    name = f"{sweep.name}-{profile}" + (f"-{sweep.model}" if sweep.model else "")
    return runs.find_or_create(experiment, name, tags, create)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """What names a sweep's trials, the same for running them and for building their table."""
    p.add_argument("name", help=f"one of: {', '.join(available())}")
    p.add_argument("--profile", default="quick", help=f"one of: {', '.join(configs('profile'))} (default quick)")
    p.add_argument("--data", default=None,
                   help=f"a data config, one of: {', '.join(configs('data'))}; default: the sweep's own (its file's "
                        "data:), else synthetic for smoke and cifar10 for the others")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default=None,
                   help=f"a model config to run the sweep on instead of its own, one of: {', '.join(configs('model'))}")
    p.add_argument("extra", nargs="*", help="further Hydra overrides for every trial")


@entry
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m lottery sweep", description="Run a paper table's sweep.")
    add_sweep_arguments(p)
    p.add_argument("--seeds", default="1", help=f"seeds per cell (default 1), or auto: a {seed_plan.PILOT}-seed pilot, "
                                                "then the seeds each cell needs (--effect, --max-seeds)")
    seed_plan.add_arguments(p)
    p.add_argument("--jobs", type=int, default=1, help="trials at once on this machine (joblib launcher)")
    p.add_argument("--launcher", default=None, help="a hydra/launcher config, e.g. slurm or submitit_local")
    p.add_argument("--dry-run", action="store_true", help="list every trial as finished / failed / missing with "
                                                          "the estimated time of the rest, and run nothing")
    p.add_argument("--worker-precision", choices=["bf16", "fp32"], default=None,
                   help="what train.amp resolves to on the workers (default: this machine's; with --launcher slurm, "
                        "bf16, as on every GPU since Ampere)")
    args = p.parse_intermixed_args(argv)
    seeds, target = seed_plan.seeds_of(args.seeds), seed_plan.target_of(args)
    sweep = load(args.name, args.model)
    setting = Setting.of(args, sweep)
    cells = compose_cells(sweep, setting)
    cfg = cells[0][1]
    found = designs(cells)
    experiment = connection.start(cfg.tracking, cfg.paths.root)
    run = parent(sweep, args.profile, cfg, experiment, create=not args.dry_run)
    parented = Setting(setting.profile, setting.data, setting.data_root,
                       (*setting.extra, f"tracking.parent={run or '<the sweep run>'}"))
    amp, na, names = worker_precision(args, cfg), inapplicable(found), [cell for cell, _ in cells]

    def look(counts: list[int]) -> list[estimate.TrialState]:
        return estimate.survey(cells, counts, experiment, amp, na)

    def planned(pilot_ran: bool) -> list[seed_plan.CellPlan]:
        pilots = look([seed_plan.PILOT] * len(cells))
        return seed_plan.plan_cells(pilots, names, sweep.metrics if sweep.signed else None, target, pilot_ran)

    def announce(states: list[estimate.TrialState], plans: list[seed_plan.CellPlan] | None) -> list[list[str]]:
        """Print where the sweep stands (and its seed plan); the commands of what is left, dense networks first."""
        print(survey(sweep, args, cells, experiment, states), flush=True)
        if plans is not None:
            print(seed_plan.render(sweep.name, plans, names, states, target), flush=True)
        tickets = commands(sweep, parented, to_run(names, states), args.jobs, args.launcher)
        cmds = [*dense_first(tickets), *tickets]
        if not cmds:
            print("nothing left to run", flush=True)
        return cmds

    plans = None if seeds else planned(pilot_ran=False)
    cmds = announce(look([p.seeds for p in plans] if plans else [seeds] * len(cells)), plans)
    if args.dry_run:
        print("\n".join("+ " + " ".join(cmd[1:]) for cmd in cmds))
        return 0
    runs.reopen(run)
    status, outcome = 0, "KILLED"  # unless every command returns
    try:
        status = launch(cmds)
        if plans is not None:  # the cells whose pilot just ran now know their need: their extra seeds
            again = planned(pilot_ran=True)
            extra = [a.seeds if a.seeds != p.seeds else 0 for a, p in zip(again, plans)]
            if any(extra):
                status = max(status, launch(announce(look(extra), again)))
        outcome = "FINISHED" if status == 0 else "FAILED"
    finally:
        runs.close(run, outcome)
    return status


def to_run(cells: list[dict[str, str]], states: list[estimate.TrialState]) -> list[list[int]]:
    """Each cell's seeds that have not finished (nor cannot run on the model): what a sweep launches."""
    return [[s.seed for s in states if s.cell == cell and s.status not in ("finished", "n/a")] for cell in cells]


def launch(cmds: list[list[str]]) -> int:
    """Run the commands one after another (a grid with a failed trial does not stop the next); the worst status."""
    status = 0
    for cmd in cmds:
        print("+", " ".join(cmd[1:]), flush=True)
        status = max(status, subprocess.call(cmd))
    return status


def dense_first(tickets: list[list[str]]) -> list[list[str]]:
    """The multiruns that train the sweep's dense networks (each once: the seeds of every ticket
    multirun that shares them), run before its tickets: a ticket never holds a GPU (or a SLURM
    job) while it waits on its dense network."""
    keys, seeds = (*DENSE_READS, *DENSE_ALSO), {}
    for cmd in tickets:
        head, rest = cmd[:4], cmd[4:]  # python -m lottery -m
        dense = [o for o in rest if re.split(r"[./]", o.split("=", 1)[0].lstrip("+~"))[0] in keys]
        shape = tuple(SEEDS if o.startswith("seed=") else o for o in [*head, *dense, "mode=dense"])
        mine = seeds.setdefault(shape, [])
        mine += [v for o in dense if o.startswith("seed=") for v in o[5:].split(",") if v not in mine]
    return [[f"seed={','.join(sorted(seeds[shape], key=int))}" if o == SEEDS else o for o in shape] for shape in seeds]


SEEDS = "seed=..."  # where a dense multirun's seeds go: those of every ticket multirun it serves

# Besides identity.DENSE_READS, what a dense network's trial reads, and where and how it runs.
DENSE_ALSO = ("seed", "profile", "paths", "store", "tracking", "measure", "robustness", "device", "threads", "jobs",
              "hydra")


def worker_precision(args, cfg: TrialConfig) -> str:
    """What ``amp`` resolves to where the trials run: this machine, or SLURM's GPUs."""
    if args.worker_precision:
        return args.worker_precision
    if args.launcher == "slurm" and choice(cfg.train.amp) == "auto":
        return "bf16"
    return precision(pick_device(cfg.device), cfg.train.amp)


def survey(sweep: Sweep, args, cells: list[tuple[dict, TrialConfig]], experiment: str,
           states: list[estimate.TrialState]) -> str:
    """The sweep's trials (finished / failed / running / missing) and the estimated time of the rest."""
    cfg = cells[0][1]
    amp = worker_precision(args, cfg)
    speed, dense = None, 0
    if any(s.status in ("failed", "missing") for s in states):
        speed = estimate.measured_speed(experiment, cfg.store.root, amp) or estimate.timed_speed(cfg)
        dense = estimate.estimate(states, cells, speed)
    return estimate.render(sweep.name, args.profile, states, speed, dense, args.jobs)
