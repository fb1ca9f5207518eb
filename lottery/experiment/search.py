"""Guided search for the accuracy-vs-cost front with Optuna (>= 4), every trial an MLflow run.

``python -m lottery search [hydra overrides]`` (``make search PROFILE=... TRIALS=N``) runs a
multi-objective study over criterion, density, mode and rewind epoch, by default maximising
``val_delta_pp`` (ticket minus dense accuracy on a validation split held out of the training
images, ``data.val_size``) and ``flops_reduction_pct``. It never selects on the test set: test
accuracies are reported beside the front, never used to choose. The study lives in persistent storage (SQLite by
default), so an interrupted search resumes and ends with exactly ``search.trials`` completed
trials; a trial that fails is recorded as failed and the study goes on. Trials are MLflow runs
under one ``role=study`` run; the Pareto front is printed and plotted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import hydra
from hydra import compose
from hydra.core.config_store import ConfigStore

from lottery import cli, networks
from lottery.config import CONF, TrainConfig, TrialConfig, register
from lottery.errors import LotteryError
from lottery.experiment import trial
from lottery.measure.plotting import pyplot, save
from lottery.pruning.criteria import CRITERIA
from lottery.pruning.modes import MODES
from lottery.tracking import connection, runs
from lottery.training.data import shape_of

log = logging.getLogger("lottery")


@dataclass
class SearchConfig:
    trials: int = 20  # completed trials the study ends with
    study: Optional[str] = None  # default: search-<profile>
    storage: str = "sqlite:///${paths.root}/optuna.db"
    objectives: List[str] = field(default_factory=lambda: ["val_delta_pp:maximize", "flops_reduction_pct:maximize"])
    criteria: List[str] = field(default_factory=CRITERIA.names)  # every registered criterion
    modes: List[str] = field(default_factory=lambda: sorted(n for n, m in MODES.items() if m.prunes))  # all that prune
    rewind_points: List[float] = field(default_factory=lambda: TrainConfig().rewind_points)  # the recipe's
    max_density: Optional[int] = None  # default: the model's maximum
    sampler_seed: int = 0


@dataclass
class SearchRunConfig(TrialConfig):
    search: SearchConfig = field(default_factory=SearchConfig)


# Metrics read from the test set (or its shifted copies): a search that chose by them would select on test.
TEST_METRICS = {"accuracy", "delta_pp", "winning", "mcnemar_p", "p_value", "loss", "perplexity", "perplexity_ratio",
                "loss_delta", "loss_p_value", "loss_delta_ci_low", "loss_delta_ci_high", "dense_loss",
                "dense_perplexity", "cka", "cifar10c_accuracy", "cifar10c_delta_pp",
                "cifar102_accuracy", "cifar102_delta_pp"}


def _objectives(spec: list[str]) -> tuple[list[str], list[str]]:
    names, directions = [], []
    for item in spec:
        name, _, direction = item.partition(":")
        if direction not in ("maximize", "minimize"):
            raise LotteryError(f"search.objectives item '{item}': write metric:maximize or metric:minimize")
        if name in TEST_METRICS:
            raise LotteryError(f"search.objectives: {name} is measured on the test set, and a search that chooses "
                               f"by it selects on test; use val_accuracy or val_delta_pp (data.val_size)")
        names.append(name)
        directions.append(direction)
    return names, directions


def sample(trial, s: SearchConfig, max_density: int) -> dict:
    """The trial's choices, as Hydra overrides."""
    mode = trial.suggest_categorical("mode", list(s.modes))
    chosen = {"criterion": trial.suggest_categorical("criterion", list(s.criteria)), "mode": mode,
              "density": trial.suggest_int("density", 1, s.max_density or max_density)}
    if MODES[mode].rewinds:
        chosen["rewind_epoch"] = trial.suggest_categorical("rewind_epoch", list(s.rewind_points))
    return chosen


def study_run(experiment: str, study_name: str) -> str:
    """The MLflow parent run of the study (found again when the study resumes)."""
    return runs.find_or_create(experiment, study_name, {"role": "study", "study": study_name})


def pareto_report(study, names: list[str], out: Path) -> tuple[str, Path]:
    from optuna.trial import TrialState  # optuna takes a second to import: only when a search runs

    front = sorted(study.best_trials, key=lambda t: t.values[0], reverse=True)
    lines = [f"Pareto front of {study.study_name}: {len(front)} of "
             f"{len(study.get_trials(states=(TrialState.COMPLETE,)))} completed trials",
             "| trial | " + " | ".join(names) + " | criterion | mode | density | rewind | test delta_pp (not used) |",
             "|---" * (len(names) + 6) + "|"]
    for t in front:
        p = t.params
        test = t.user_attrs.get("test_delta_pp")
        lines.append(f"| {t.number} | " + " | ".join(f"{v:+.2f}" for v in t.values)
                     + f" | {p['criterion']} | {p['mode']} | {p['density']} | {p.get('rewind_epoch', '-')} | "
                     + ("-" if test is None else f"{test:+.2f}") + " |")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    fig, ax = pyplot().subplots(figsize=(5, 3.6))
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], c="lightgrey", label="trials")
    ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    save(fig, out)
    return "\n".join(lines), out


def open_study(s: SearchConfig, name: str, directions: list[str]):
    """The study in its storage, created or resumed, with a sampler that samples new points."""
    import optuna

    storage = s.storage
    if s.storage.startswith(("sqlite", "postgresql", "mysql")):
        # Heartbeats let a resumed study mark the trial a killed process left RUNNING as failed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(s.storage, heartbeat_interval=30, grace_period=90)
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True)
    # Seeded by the number of trials so far: a resumed study samples new points, not the first ones again.
    study.sampler = optuna.samplers.NSGAIISampler(seed=s.sampler_seed + len(study.trials))
    return study


def objective(cfg: "SearchRunConfig", compose_trial, names: list[str], study_name: str, parent: str):
    """One Optuna trial: a lottery trial of the sampled choices, valued on the validation split."""
    max_density = networks.anatomy(networks.skeleton(cfg.model, shape_of(cfg.data))).max_removable

    def run(t):
        chosen = sample(t, cfg.search, max_density)
        overrides = [f"{k}={v}" for k, v in chosen.items()]
        out = trial.run(compose_trial([*overrides, f"tracking.parent={parent}"]), overrides=overrides,
                        tags={"study": study_name, "optuna_trial": t.number})
        t.set_user_attr("mlflow_run_id", out["run_id"])
        t.set_user_attr("test_delta_pp", out.get("delta_pp"))  # reported beside the front, never optimised
        values = [out.get(n) for n in names]
        if any(v is None for v in values):
            raise LotteryError(f"trial {t.number} did not measure {names}")
        return tuple(values)

    return run


def search(cfg: "SearchRunConfig", compose_trial) -> str:
    """Run (or resume) the study until it has ``cfg.search.trials`` completed trials."""
    import mlflow
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    s = cfg.search
    names, directions = _objectives(s.objectives)
    if len(names) != 2:
        raise LotteryError("search.objectives: give exactly two objectives (the front is plotted in 2-D)")
    if not cfg.data.val_size:
        raise LotteryError("the search chooses on a validation split held out of the training images: "
                           "set data.val_size (e.g. data.val_size=5000)")
    name = s.study or f"search-{cfg.profile_name}"
    parent = study_run(connection.start(cfg.tracking, cfg.paths.root), name)
    study = open_study(s, name, directions)
    completed = len(study.get_trials(states=(TrialState.COMPLETE,)))
    if completed:
        log.info("resuming study %s: %d of %d trials already completed", name, completed, s.trials)
    if completed < s.trials:
        study.optimize(objective(cfg, compose_trial, names, name, parent), catch=(Exception,),
                       callbacks=[MaxTrialsCallback(s.trials, states=(TrialState.COMPLETE,))])
    report, png = pareto_report(study, names, Path(cfg.paths.root) / "search" / f"{name}.png")
    with mlflow.start_run(run_id=parent):
        mlflow.log_artifact(str(png))
        mlflow.log_text(report, "pareto.md")
        mlflow.log_metrics({"completed_trials": len(study.get_trials(states=(TrialState.COMPLETE,))),
                            "failed_trials": len(study.get_trials(states=(TrialState.FAIL,)))})
    print(report)
    print(f"plot: {png} (MLflow study run {parent})")
    return report


ConfigStore.instance().store(name="search_schema", node=SearchRunConfig)
register()


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="search")
@cli.task
def main(cfg: SearchRunConfig, overrides: list[str]) -> None:
    """``python -m lottery search [overrides]``: run or resume the study."""

    def compose_trial(chosen: list[str]):
        return compose(config_name="search", overrides=[*overrides, *chosen])

    search(cfg, compose_trial)
