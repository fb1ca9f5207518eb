"""The multi-node set-up as the README gives it, against a real PostgreSQL server started here:
``make server`` on it, a two-job sweep logging through the server, the runs still there after the
server restarts; and a backend it cannot use is one line at the door."""

import shutil
import socket
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
from mlflow import MlflowClient

from lottery.errors import LotteryError
from lottery.experiment import sweeps
from lottery.tracking import connection, postgres, server
from tests.helpers import REPO, free_port, healthy, stop

needs_postgres = pytest.mark.skipif(postgres.binaries() is None,
                                    reason="no PostgreSQL binaries (initdb, pg_ctl) on this machine")


@pytest.fixture(scope="module")
def database():
    """A PostgreSQL cluster of its own on a free port, stopped and deleted at the end. Its folder
    is in /tmp, open to the ``postgres`` user it runs as when the tests run as root."""
    folder = Path(tempfile.mkdtemp(prefix="lottery-pg-"))
    folder.chmod(0o755)
    local = postgres.Local(folder / "pg", free_port())
    local.start()
    yield local
    local.stop()
    shutil.rmtree(folder, ignore_errors=True)


def make_server(backend: str, port: int, root: Path) -> subprocess.Popen:
    """``make server BACKEND_URI=...`` (one worker), once it answers its health probe."""
    return healthy(subprocess.Popen(["make", "-s", "server", f"BACKEND_URI={backend}", f"PORT={port}", f"ROOT={root}",
                                     "WORKERS=1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True), port)


@needs_postgres
def test_a_two_job_sweep_logs_through_a_server_on_postgresql_and_outlives_a_restart(database, tiny, tmp_path,
                                                                                     monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    process = make_server(database.uri, port, tmp_path / "server")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what every worker exports
        assert sweeps.main([*tiny, "--jobs", "2"]) == 0
        logs = "".join(p.read_text() for p in (tmp_path / "root").rglob("*.log"))
        assert logs.count(" trained: accuracy") == 1 and logs.count("reused from the store") == 2, logs

        client = MlflowClient(uri)

        def logged():
            found = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
            return {r.info.run_id: (r.data.tags["role"], r.info.status, r.data.tags.get("mlflow.parentRunId"))
                    for r in found}

        before = logged()
        parent = [run_id for run_id, (role, _, _) in before.items() if role == "sweep"]
        assert len(parent) == 1
        assert sorted((role, status, up) for role, status, up in before.values() if role != "sweep") == [
            ("dense", "FINISHED", parent[0]), ("ticket", "FINISHED", parent[0]), ("ticket", "FINISHED", parent[0])]
        assert before[parent[0]][1] == "FINISHED"
        ticket = next(run_id for run_id, (role, _, _) in before.items() if role == "ticket")
        assert "blocks.json" in {a.path for a in client.list_artifacts(ticket)}  # uploaded through the server

        stop(process)
        process = make_server(database.uri, port, tmp_path / "server")  # the same database, a new server
        assert logged() == before
        assert client.get_run(ticket).data.metrics["blocks_removed"] in (1, 2)
    finally:
        stop(process)


@needs_postgres
def test_a_backend_the_server_cannot_use_is_one_line_before_mlflow_starts(database, tmp_path, capsys, monkeypatch):
    password = (database.folder / "password").read_text().strip()
    cases = {
        database.uri.replace(password, "not-the-password"): "refused user 'lottery' (password authentication failed",
        database.uri.rsplit("/", 1)[0] + "/nowhere": "has no database 'nowhere' (database \"nowhere\" does not exist)",
        database.uri.replace(f":{database.port}/", f":{free_port()}/"): "cannot reach postgresql at 127.0.0.1:",
    }
    for backend, message in cases.items():
        assert server.main(["--backend-uri", backend, "--port", str(free_port()), "--root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lottery: error: ") and message in err and err.count("\n") == 1, err
        assert password not in err and "not-the-password" not in err  # the URI is shown with its password masked

    monkeypatch.setitem(sys.modules, "psycopg", None)  # a fresh environment without the driver
    with pytest.raises(LotteryError, match=r"needs the Python driver 'psycopg', which is not installed: `make install`"):
        server.check_backend(database.uri)


def test_a_port_in_use_and_an_unknown_backend_are_one_line(tmp_path):
    with pytest.raises(LotteryError, match="unsupported backend 'mongodb'"):
        server.check_backend("mongodb://db/lottery")
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        with pytest.raises(LotteryError, match=f"cannot serve on 127.0.0.1:{port} .*choose another PORT"):
            server.check_port("127.0.0.1", port)


def test_a_server_bound_beyond_the_loopback_accepts_this_machines_names():
    assert server.allowed_hosts("127.0.0.1", 5000, []) == []  # MLflow's own defaults
    hosts = server.allowed_hosts("0.0.0.0", 5000, ["db.example.org"])
    name = socket.gethostname()
    assert {name, f"{name}:5000", "db.example.org:5000", "localhost:*", "10.*"} <= set(hosts)


class Refusing(BaseHTTPRequestHandler):
    """An MLflow server that does not allow the Host header it is reached by: /health answers, the API is 403."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 403)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_worker_reaching_the_server_by_a_name_it_refuses_is_told_at_the_door(tmp_path):
    http = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    Thread(target=http.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{http.server_address[1]}"
        with pytest.raises(LotteryError, match=r"refuses requests addressed to '127.0.0.1:\d+' \(HTTP 403\): start it "
                                               r"with `make server HOST=0.0.0.0 ALLOWED_HOSTS=127.0.0.1:\d+`"):
            connection.check_uri(uri)
    finally:
        http.shutdown()
