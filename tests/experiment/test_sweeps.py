"""A sweep end to end: its parent run, its trials under it, the dry run's states and estimate,
the table attached to the parent."""

import mlflow

from lottery.experiment import sweeps
from lottery.paper import tables


def test_a_sweep_runs_under_one_parent_and_its_dry_run_lists_what_is_left(tiny, tmp_path, capsys, new_store):
    new_store(tmp_path / "root" / "mlflow.db")  # the sweep's default store below paths.root
    assert sweeps.main([*tiny, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tiny (smoke): 2 trials: 0 finished, 0 failed, 0 running, 2 missing" in out
    assert "density=1 seed=0: missing  ~" in out and "5 timed training steps" in out
    assert "1 dense network(s) to train first" in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}")
    assert not mlflow.search_runs(experiment_names=["tiny"], output_format="list")  # the dry run ran nothing

    assert sweeps.main(tiny) == 0
    capsys.readouterr()
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parent = [r for r in runs if r.data.tags["role"] == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags["role"] != "sweep"]
    assert sorted(r.data.tags["role"] for r in children) == ["dense", "ticket", "ticket"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}

    assert sweeps.main([*tiny, "--seeds", "2", "--dry-run"]) == 0  # half of the trials finished
    out = capsys.readouterr().out
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
