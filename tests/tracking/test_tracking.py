"""Tracking that never loses a result: a bad URI or a server that is down is one line at the door;
a server that dies while a trial trains costs nothing (history buffered, results kept in the
outbox and logged once later); runs follow MLflow's own conventions (source, logged models)."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from lottery.config import TrackingConfig
from lottery.errors import LotteryError
from lottery.tracking import connection, provenance
from lottery.tracking import runs as tracking
from lottery.tracking.outbox import main as sync_command
from lottery.tracking.outbox import sync_all
from tests.helpers import REPO, free_port, healthy, stop, trial_keys

MLFLOW = Path(sys.executable).parent / "mlflow"


def serve(folder: Path, port: int) -> subprocess.Popen:
    """``make server``'s command on a port of its own, once it answers its health probe."""
    return healthy(subprocess.Popen([str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'db.sqlite'}",
                                     "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                     "--port", str(port), "--workers", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), port)


@pytest.mark.parametrize("uri,message", [
    ("bogus://x", "tracking.uri=bogus://x: unsupported scheme 'bogus'; use one of file, http, https, mssql, mysql, "
                  "postgresql, sqlite"),
    ("http://127.0.0.1:9", "cannot reach the MLflow server at http://127.0.0.1:9 ("),
])
def test_an_unusable_tracking_uri_is_one_line_at_the_door(tmp_path, uri, message):
    with pytest.raises(LotteryError) as e:
        connection.start(TrackingConfig(uri=uri), str(tmp_path))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    if uri.startswith("http"):
        assert str(e.value).endswith("start it with `make server` or unset `tracking.uri`")


def test_a_server_that_is_down_stops_the_cli_before_any_work(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lottery", "profile=smoke", "data=synthetic", "device=cpu",
                        f"paths.root={tmp_path}", "tracking.uri=http://127.0.0.1:9"], cwd=REPO, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("lottery: error: cannot reach the MLflow server at")
    assert not (tmp_path / "store").exists()  # nothing was trained


def ticket_runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="tags.role = 'ticket'")


def test_a_server_killed_while_a_trial_trains_loses_nothing_and_logs_the_trial_once(tmp_path, new_store, capsys):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    new_store(tmp_path / "server" / "db.sqlite")
    server = serve(tmp_path / "server", port)
    args = [sys.executable, "-m", "lottery", "profile=smoke", "data=synthetic", "model.depth=14", "train.epochs=4",
            "data.train_size=128", "train.progress=true", "criterion=random", "density=1", "device=cpu",
            "measure.enabled=false", "robustness.enabled=false", "measure.carbon=false", "tracking.log_model=false",
            f"tracking.uri={uri}", f"paths.root={tmp_path / 'root'}"]
    try:  # a request to the dead server fails at once (the default retries cost seconds each)
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        trial = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        seen = []
        for line in trial.stdout:  # the dense network trained, the ticket's first epoch logged: kill the server
            seen.append(line)
            if "ticket epoch 1/" in line:
                stop(server)
                break
        out = "".join(seen) + trial.stdout.read()
        assert trial.wait(timeout=1200) == 2, out[-3000:]
        assert out.count("MLflow did not take the training history") == 1  # warned once; the epochs went on
        assert "ticket epoch 4/4" in out
        last = out.strip().splitlines()[-1]
        assert last.startswith("lottery: error: MLflow did not take the results of run init-random-p1-resnet14-s0 "
                               f"(the tracking server at {uri} does not answer); they are kept in ")
        outbox = list((tmp_path / "root" / "store" / "outbox").iterdir())
        assert len(outbox) == 1 and (outbox[0] / "files" / "ticket.pt").exists()

        server = serve(tmp_path / "server", port)  # restarted on the same backend
        before = ticket_runs(uri)
        assert [r.info.status for r in before] == ["RUNNING"]  # created when the trial started; not finished
        capsys.readouterr()  # `python -m lottery sync`, in this process
        assert sync_command(["--root", str(tmp_path / "root"), "--tracking-uri", uri]) == 0
        assert "1 run(s) logged from the outbox" in capsys.readouterr().out
        after = ticket_runs(uri)
        assert len(after) == 1 and after[0].info.status == "FINISHED" and after[0].info.run_id == before[0].info.run_id
        client = mlflow.MlflowClient()
        assert [m.step for m in client.get_metric_history(after[0].info.run_id, "train_loss")] == [1, 2, 3, 4]
        assert {"ticket.pt", "blocks.json", "config.yaml"} <= {a.path for a in client.list_artifacts(after[0].info.run_id)}
        assert after[0].data.metrics["blocks_removed"] == 1 and not list(outbox[0].parent.iterdir())

        assert sync_all(outbox[0].parent) == [] and len(ticket_runs(uri)) == 1  # 0 finished, then 1: never 2
    finally:
        stop(server)


def test_a_trial_started_again_logs_its_outbox_instead_of_training(smoke, monkeypatch):
    """The results a dead server missed are logged by the next start of the same trial, once."""
    from lottery.experiment import ticket, trial

    cfg = smoke("model.depth=14", "criterion=random", "measure.enabled=false", "robustness.enabled=false")
    real = tracking._tag

    def server_gone(*a, **k):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(tracking, "_tag", server_gone)
    with pytest.raises(LotteryError, match="does not answer\\); they are kept in"):
        trial.run(cfg)
    monkeypatch.setattr(tracking, "_tag", real)

    def must_not_train(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(ticket, "train_ticket", must_not_train)
    out = trial.run(cfg)
    key = trial_keys(cfg)["config_key"]
    own = mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id  # the worker's store is shared by
    # every file it runs: test_trial.py runs this very config in an experiment of its own
    [run] = [r for r in ticket_runs(cfg.tracking.uri) if r.data.tags.get("config_key") == key
             and r.info.experiment_id == own]
    assert run.info.status == "FINISHED" and run.info.run_id == out["run_id"]
    assert run.data.metrics["accuracy"] == out["accuracy"] and run.data.tags["cell_key"]  # its tags, kept too
    assert trial.run(cfg)["skipped"]


@pytest.mark.filterwarnings("error:No complete tensor found")  # torch.export on a channels_last network's weights
def test_runs_name_their_source_and_a_ticket_is_an_mlflow_model(smoke):
    """The UI's Source column names lottery and its commit; ``mlflow.pytorch.load_model`` returns a
    network that computes what ``lottery.load_ticket`` does."""
    from lottery import load_ticket
    from lottery.experiment import trial

    cfg = smoke("model.depth=14", "criterion=random", "measure.enabled=false", "robustness.enabled=false",
                "tracking.log_model=true")
    out = trial.run(cfg)
    run = mlflow.get_run(out["run_id"])
    assert run.data.tags["mlflow.source.name"] == "lottery" and run.data.tags["mlflow.source.type"] == "LOCAL"
    if provenance.commit():
        assert run.data.tags["mlflow.source.git.commit"] == provenance.commit()
    [model] = run.outputs.model_outputs
    logged = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ticket = load_ticket(out["run_id"], uri=cfg.tracking.uri)
    ticket.train()  # the ticket as a module: it trains, and .eval() / .train(False) work
    ticket.train(False)
    with torch.no_grad():
        torch.testing.assert_close(logged(x), ticket(x), rtol=1e-5, atol=1e-5)  # the logged one is already eval
    dense = mlflow.get_run(run.data.tags["dense_run_id"])
    assert dense.outputs.model_outputs and dense.data.tags["mlflow.source.name"] == "lottery"
