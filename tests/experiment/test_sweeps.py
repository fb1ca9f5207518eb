"""A sweep end to end: its parent run, its trials under it, the dry run's states and estimate,
the table attached to the parent; a re-run skips its finished dense step as it skips tickets."""

import mlflow

from lottery.experiment import context, dense, sweeps, trial
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
