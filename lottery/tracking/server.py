"""The MLflow tracking server for many workers (``make server``), and its backend checked at the door.

``python -m lottery server`` checks that the database it would serve is usable (a SQLite folder we
can write, or a PostgreSQL / MySQL / SQL Server database we can sign in to, within seconds) and
that its port is free, each failure one line saying what to fix, then becomes ``mlflow server``.
A worker on another machine reaches it by name: a server bound beyond the loopback also accepts
this machine's host names in the Host header (MLflow's default accepts only loopback and private
addresses, while its ``/health`` answers everyone, so a refused name would otherwise surface only
at the first logged run).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from lottery.cli import ArgumentParser, entry
from lottery.errors import LotteryError
from lottery.files import check_writable

DATABASES = {"postgresql": "psycopg", "mysql": "pymysql", "mssql": "pyodbc"}  # dialect -> the driver we document
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def hidden(uri: str) -> str:
    """The URI with its password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not a database URL: nothing to hide
        return uri


def check_database(uri: str, timeout: float = 5.0) -> None:
    """Sign in to a database backend within ``timeout`` seconds, else one line: the driver missing,
    the server unreachable, the user or password refused, or the database missing."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    shown = hidden(uri)
    try:
        url = sqlalchemy.engine.make_url(uri)
        dialect = url.get_backend_name()
        args = {"connect_timeout": max(1, round(timeout))} if dialect in ("postgresql", "mysql") else {}
        engine = sqlalchemy.create_engine(uri, connect_args=args)
    except ModuleNotFoundError as e:
        raise LotteryError(f"the backend {shown} needs the Python driver '{e.name}', which is not installed: "
                           f"`make install` installs psycopg for PostgreSQL; for another database, pip install its "
                           "driver into .venv") from None
    except (ArgumentError, NoSuchModuleError) as e:
        raise LotteryError(f"the backend URI {shown} is not a database URL SQLAlchemy knows ({e}): write it as "
                           "postgresql://USER:PASSWORD@HOST:PORT/DATABASE") from None
    where = f"{dialect} at {url.host or 'localhost'}:{url.port or 'its default port'}"
    try:
        with engine.connect():
            pass
    except DBAPIError as e:
        said = str(e.orig).strip()
        detail = said.split("FATAL:", 1)[-1].strip().splitlines()[0]
        if "authentication failed" in said or "Access denied" in said or "no pg_hba.conf entry" in said:
            raise LotteryError(f"{where} refused user '{url.username}' ({detail}): fix the user and password in "
                               "BACKEND_URI") from None
        if "does not exist" in said and "database" in said or "Unknown database" in said:
            raise LotteryError(f"{where} has no database '{url.database}' ({detail}): create it (PostgreSQL: "
                               f"createdb -h {url.host} -p {url.port or 5432} -U {url.username} {url.database}) "
                               "or name an existing one in BACKEND_URI") from None
        raise LotteryError(f"cannot reach {where} ({detail}): start the database (`make postgres` starts a local "
                           "PostgreSQL), or fix the host and port in BACKEND_URI") from None
    finally:
        engine.dispose()


def check_backend(uri: str, timeout: float = 5.0) -> None:
    """A backend the server can use, else one line (before MLflow's own traceback)."""
    scheme = uri.split(":", 1)[0].split("+")[0] if "://" in uri else "file"
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise LotteryError(f"BACKEND_URI={uri}: a SQLite backend is a file, sqlite:////absolute/path/mlflow.db")
        check_writable(Path(uri[len("sqlite:///"):]).parent, "BACKEND_URI (the folder of its database)")
    elif scheme == "file":
        check_writable(uri.removeprefix("file://"), "BACKEND_URI")
    elif scheme in DATABASES:
        check_database(uri, timeout)
    else:
        raise LotteryError(f"BACKEND_URI={hidden(uri)}: unsupported backend '{scheme}'; use sqlite:///PATH or "
                           f"{', '.join(f'{d}://...' for d in DATABASES)}")


def check_port(host: str, port: int) -> None:
    """Nothing listens on ``host:port`` (bound as the server binds: a port whose last connections
    are still closing, TIME_WAIT, is free to it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise LotteryError(f"cannot serve on {host}:{port} ({e.strerror}): choose another PORT=..., or stop "
                               "what holds it") from None


def allowed_hosts(host: str, port: int, extra: list[str]) -> list[str]:
    """The Host headers to accept besides MLflow's defaults: none on the loopback; otherwise this
    machine's names, with and without the port, and any the user adds (``ALLOWED_HOSTS``)."""
    if host in LOOPBACK and not extra:
        return []
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()} if host not in LOOPBACK else set()
    mine = [f"{n}{p}" for n in sorted(names | set(extra)) for p in ("", f":{port}")]
    return [*get_default_allowed_hosts(), *mine]


@entry
def main(argv=None) -> int:
    """``python -m lottery server``: check the backend and the port, then serve MLflow."""
    p = ArgumentParser(prog="python -m lottery server", description=main.__doc__)
    p.add_argument("--root", default=".lottery", help="paths.root: the default SQLite backend and the artifacts")
    p.add_argument("--backend-uri", default=None,
                   help="where runs are kept (default: sqlite:///ROOT/server/mlflow.db); postgresql://USER:PW@HOST/DB")
    p.add_argument("--artifacts", default=None, help="where uploaded artifacts are kept (default: ROOT/server/artifacts)")
    p.add_argument("--host", default="127.0.0.1", help="the interface to bind (0.0.0.0: every one, for workers elsewhere)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=None, help="server processes (MLflow's default: 4)")
    p.add_argument("--allowed-hosts", default="", help="further host names workers use to reach it, comma-separated")
    args = p.parse_args(argv)
    served = Path(args.root).absolute() / "server"
    backend = args.backend_uri or f"sqlite:///{served / 'mlflow.db'}"
    artifacts = args.artifacts or str(served / "artifacts")
    check_backend(backend)
    if "://" not in artifacts or artifacts.startswith("file://"):
        check_writable(artifacts.removeprefix("file://"), "the artifacts folder")
        Path(artifacts.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    check_port(args.host, args.port)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts,
               "--host", args.host, "--port", str(args.port)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    hosts = allowed_hosts(args.host, args.port, [h for h in args.allowed_hosts.split(",") if h])
    if hosts:
        command += ["--allowed-hosts", ",".join(hosts)]
    print(f"MLflow on http://{args.host}:{args.port} (health: /health), runs in {hidden(backend)}, artifacts in "
          f"{artifacts}", flush=True)
    os.execv(command[0], command)
