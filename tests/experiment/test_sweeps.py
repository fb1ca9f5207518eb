"""A sweep end to end: its parent run, its trials under it, the dry run's states and estimate,
the table attached to the parent; a re-run skips its finished dense step as it skips tickets;
``--seeds auto``: the pilot, then the seeds each cell needs."""

import mlflow

from lottery.experiment import context, dense, estimate, sweeps, trial
from lottery.experiment.design import derive
from lottery.paper import tables
from lottery.tracking import logged_model


def test_a_sweep_runs_under_one_parent_and_its_dry_run_lists_what_is_left(tiny, tmp_path, capfd, new_store):
    new_store(tmp_path / "root" / "mlflow.db")  # the sweep's default store below paths.root
    assert sweeps.main([*tiny, "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "tiny (smoke): 2 trials: 0 finished, 0 failed, 0 running, 2 missing" in out
    assert "density=1 seed=0: missing  ~" in out and "5 timed training steps" in out
    assert "1 dense network(s) to train first" in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}")
    assert not mlflow.search_runs(experiment_names=["tiny"], output_format="list")  # the dry run ran nothing

    assert sweeps.main(tiny) == 0
    capfd.readouterr()
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parent = [r for r in runs if r.data.tags["role"] == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags["role"] != "sweep"]
    assert sorted(r.data.tags["role"] for r in children) == ["dense", "ticket", "ticket"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}

    assert sweeps.main(tiny) == 0  # run again: every trial finished, so neither the dense step nor a ticket runs
    out = capfd.readouterr()
    assert "2 trials: 2 finished" in out.out and "nothing left to run" in out.out
    assert "mode=dense" not in out.out + out.err and "trials:" not in out.err
    again = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)

    assert sweeps.main([*tiny, "--seeds", "2", "--dry-run"]) == 0  # half of the trials finished
    out = capfd.readouterr().out
    assert "4 trials: 2 finished, 0 failed, 0 running, 2 missing" in out
    assert "density=2 seed=0: finished" in out and "density=2 seed=1: missing  ~" in out
    # the speed of 2 tickets and 1 dense network; seed 1's dense network is still to train
    assert "from the median of 3 finished trainings" in out and "1 dense network(s) to train first" in out
    assert "0 dense network(s) to train first" not in out

    args = ["tiny", "--profile", "smoke", "--root", str(tmp_path / "root"), *tiny[3:]]  # the sweep's overrides
    assert tables.main(args) == 0 and tables.main(args) == 0  # rebuilt: replaced on the same parent
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.role = 'sweep'", output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["cells_measured"] == "2"
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"tiny.md", "tiny.csv", "tiny.json"} <= files


def test_a_finished_dense_step_is_skipped_without_loading_data_or_exporting_again(smoke, monkeypatch):
    """A dense trial whose entry is stored and whose run in the experiment finished returns at once;
    with tracking.log_model on, a run finished without its model is given it once, then skipped."""
    small = ("mode=dense", "model.depth=14", "data.train_size=128", "measure.enabled=false", "robustness.enabled=false")
    first = trial.run(smoke(*small))
    exports, real_export = [], logged_model.log_network

    def export(run_id, model):
        exports.append(run_id)
        real_export(run_id, model)

    monkeypatch.setattr(dense, "log_network", export)
    loads, real_load = [], context.load_dataset
    monkeypatch.setattr(context, "load_dataset", lambda *a: loads.append(a) or real_load(*a))
    again = trial.run(smoke(*small))
    assert again == {"accuracy": first["accuracy"], "run_id": first["run_id"], "skipped": True} and not loads

    assert "skipped" not in trial.run(smoke(*small, "tracking.log_model=true"))  # its run lacks the model
    assert exports == [first["run_id"]] and len(loads) == 1
    again = trial.run(smoke(*small, "tracking.log_model=true"))
    assert again["skipped"] and again["run_id"] == first["run_id"] and exports == [first["run_id"]] and len(loads) == 1


def faked_speed(cfg):
    """What five timed training steps would measure, at once."""
    return estimate.Speed(1e10, None, "faked")


def log_pilot(tiny, root):
    """A finished 3-seed pilot of the tiny sweep, as its trials would log it: density=1's deltas
    spread 0.2 pp (it needs no more seeds), density=2's 1 pp (it needs 7)."""
    cells = sweeps.compose_cells(sweeps.load("tiny"), sweeps.Setting("smoke", "synthetic", extra=tuple(tiny[3:])))
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("tiny").experiment_id
    for (cell, cfg), deltas in zip(cells, ((0.5, 0.3, 0.1), (1.0, -1.0, 0.0))):
        for seed, delta in enumerate(deltas):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.set_tags({"role": "ticket", "seed": str(seed), **derive(estimate.with_seed(cfg, seed)).keys})
                mlflow.log_metric("delta_pp", delta)


def test_seeds_auto_plans_the_pilot_first_then_each_cells_need_from_the_pilots_sd(tiny, tmp_path, capfd, new_store,
                                                                                    monkeypatch):
    # the store below paths.root, a copy of the blank one (no schema migrations)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path / "root" / "mlflow.db"))
    monkeypatch.setattr(estimate, "timed_speed", faked_speed)
    assert sweeps.main([*tiny, "--seeds", "auto", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "tiny (smoke): 6 trials: 0 finished, 0 failed, 0 running, 6 missing" in out
    for p in ("1", "2"):
        assert f"  density={p}: runs the 3-seed pilot first; its need is known after; 3 trial(s) to run, ~" in out
    assert "beyond the pilot: none planned yet; 2 cell(s) know their need after their pilot" in out
    assert "+ -m lottery -m mode=init model.depth=14 criterion=random density=1,2 profile=smoke seed=0,1,2 " in out

    log_pilot(tiny, tmp_path / "root")
    assert sweeps.main([*tiny, "--seeds", "auto", "--max-seeds", "5", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "tiny (smoke): 8 trials: 6 finished, 0 failed, 0 running, 2 missing" in out
    assert "  density=1: pilot sd 0.20 pp over 3 seeds: needs 3; nothing left to run" in out
    assert "  density=2: pilot sd 1.00 pp over 3 seeds: needs 5, capped: would need 7; 2 trial(s) to run, ~" in out
    assert "beyond the pilot: 2 trial(s) to run, ~" in out
    dense, ticket = [line for line in out.splitlines() if line.startswith("+ ")]  # the extra seeds, of that cell only
    assert "model.depth=14 profile=smoke seed=3,4 tracking.experiment=tiny" in dense and dense.endswith("mode=dense")
    assert " density=2 profile=smoke seed=3,4 " in ticket
    assert sweeps.main([*tiny, "--seeds", "3", "--dry-run"]) == 0  # a count: as ever, no plan
    out = capfd.readouterr().out
    assert "6 trials: 6 finished" in out and "seed plan" not in out and "nothing left to run" in out


def test_seeds_auto_runs_the_pilot_then_the_extra_seeds_its_pilot_asks_for(tiny, tmp_path, capfd, new_store,
                                                                             monkeypatch):
    """The real sweep, its trials faked: the pilot's multiruns, then (the pilot finished) the extra
    seeds of the one cell that needs them, under the one parent run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path / "root" / "mlflow.db"))
    monkeypatch.setattr(estimate, "timed_speed", faked_speed)
    launched = []

    def launch(cmds):
        launched.append([" ".join(c[4:]) for c in cmds])
        if len(launched) == 1:
            log_pilot(tiny, tmp_path / "root")
        return 0

    monkeypatch.setattr(sweeps, "launch", launch)
    assert sweeps.main([*tiny, "--seeds", "auto"]) == 0
    out = capfd.readouterr().out
    pilot, extra = launched
    assert [c.split(" tracking.")[0] for c in pilot] == [
        "model.depth=14 profile=smoke seed=0,1,2", "mode=init model.depth=14 criterion=random density=1,2 "
        "profile=smoke seed=0,1,2"]
    assert [c.split(" tracking.")[0] for c in extra] == [
        "model.depth=14 profile=smoke seed=3,4,5,6", "mode=init model.depth=14 criterion=random density=2 "
        "profile=smoke seed=3,4,5,6"]
    assert "  density=2: pilot sd 1.00 pp over 3 seeds: needs 7; 4 trial(s) to run, ~" in out
    parent = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.role = 'sweep'", output_format="list")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert all(f"tracking.parent={parent[0].info.run_id}" in c for c in pilot + extra)
