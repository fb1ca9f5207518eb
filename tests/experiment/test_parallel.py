"""Beyond one process: a launcher running trials at once, and the Optuna search."""

import subprocess
import sys

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from lottery.errors import LotteryError
from lottery.experiment import search, trial
from tests.helpers import REPO, compose_cfg


def test_submitit_local_sweep_trains_the_shared_dense_once(tmp_path, new_store):
    uri = new_store(tmp_path / "db.sqlite")
    r = subprocess.run(
        [sys.executable, "-m", "lottery", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
         "device=cpu",
         f"hydra.sweep.dir={tmp_path / 'sweep'}", "profile=smoke", "data=synthetic", "model.depth=14",
         "criterion=random", "density=1,2", "measure.enabled=false", "robustness.enabled=false", "data.train_size=128",
         "measure.carbon=false", "threads=1", f"store.root={tmp_path / 'store'}", f"tracking.uri={uri}",
         "tracking.log_model=false",
         "tracking.experiment=par"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*.log"))
    assert logs.count(" trained: accuracy") == 1 and logs.count("reused from the store") == 1, logs
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["par"], output_format="list")
    roles = sorted(x.data.tags["role"] for x in runs)
    assert roles == ["dense", "ticket", "ticket"]


def fake_search_cfg(tmp_path, trials):
    cfg = compose_cfg("profile=smoke", "data=synthetic", f"tracking.uri=sqlite:///{tmp_path / 'db.sqlite'}",
                      "tracking.experiment=search", "data.val_size=50")
    from omegaconf import OmegaConf

    s = OmegaConf.structured(search.SearchConfig(trials=trials, storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                                 study="s"))
    OmegaConf.set_struct(cfg, False)
    cfg.search = s
    return cfg


def test_search_records_a_failing_trial_resumes_and_prints_the_front(tmp_path, monkeypatch, capsys, new_store):
    new_store(tmp_path / "db.sqlite")
    calls = []

    def fake_run(cfg, overrides=(), tags=None):
        calls.append(tags["optuna_trial"])
        if tags["optuna_trial"] == 1:
            raise LotteryError("this trial breaks")
        density = int(next(o for o in overrides if o.startswith("density=")).split("=")[1])
        return {"run_id": f"r{len(calls)}", "val_delta_pp": 1.0 - 0.3 * density, "delta_pp": 99.0,
                "flops_reduction_pct": 6.8 * density}

    monkeypatch.setattr(trial, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    compose_trial = lambda overrides: None  # noqa: E731 - fake_run ignores the config
    search.search(fake_search_cfg(tmp_path, 3), compose_trial)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1
    # resumed with a larger budget: only the missing trials run
    search.search(fake_search_cfg(tmp_path, 5), compose_trial)
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    assert len(calls) == 6
    for t in study.get_trials(states=(TrialState.COMPLETE,)):  # chosen on validation, test only reported
        assert t.values[0] == pytest.approx(1.0 - 0.3 * t.params["density"]) and t.user_attrs["test_delta_pp"] == 99
    out = capsys.readouterr().out
    assert "Pareto front of s" in out and (tmp_path / ".lottery" / "search" / "s.png").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'db.sqlite'}")
    parent = mlflow.search_runs(experiment_names=["search"], filter_string="tags.role = 'study'", output_format="list")
    assert len(parent) == 1 and parent[0].data.metrics["completed_trials"] == 5


def test_bad_objectives_are_a_clear_error():
    with pytest.raises(LotteryError, match="metric:maximize"):
        search._objectives(["val_delta_pp:up"])


@pytest.mark.parametrize("objective", ["delta_pp", "accuracy", "cifar10c_delta_pp", "cka"])
def test_the_search_refuses_objectives_read_from_the_test_set(objective):
    with pytest.raises(LotteryError, match="selects on test"):
        search._objectives([f"{objective}:maximize", "flops_reduction_pct:maximize"])


def test_the_search_needs_a_validation_split(tmp_path):
    cfg = fake_search_cfg(tmp_path, 1)
    cfg.data.val_size = None
    with pytest.raises(LotteryError, match="data.val_size"):
        search.search(cfg, lambda overrides: None)


def test_the_slurm_launcher_requeues_a_preempted_or_timed_out_trial(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    monkeypatch.delenv("LOTTERY_SLURM_REQUEUES", raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout == 3
    assert launcher.signal_delay_s == 120 and launcher.timeout_min == 720
    # submitit requeues only a checkpointable callable: the plugin resubmits the same trial, which
    # resumes from the state its last epoch saved (tests/test_train.py kills and resumes one)
    assert "checkpoint" in vars(SlurmLauncher.__mro__[1])
