"""A PostgreSQL server of one's own, in a folder, for trying the tracking server's PostgreSQL
backend on one machine (``make postgres``) and for testing it against the real thing.

It runs the PostgreSQL binaries the machine has (``initdb``, ``pg_ctl``: on ``PATH`` or the newest
``/usr/lib/postgresql/<version>/bin``), listening on 127.0.0.1 only, with one password-protected
user and database (both ``lottery``). PostgreSQL refuses to run as root: as root it runs as the
``postgres`` user, which then owns the folder. The password is random, kept in ``<folder>/uri``
(readable by its owner only), which is the backend URI to give ``make server``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lottery.cli import ArgumentParser, entry
from lottery.errors import LotteryError

USER = DATABASE = "lottery"
HOST = "127.0.0.1"


def binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None on a machine without PostgreSQL."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


@dataclass
class Local:
    """A PostgreSQL cluster in ``folder`` (its data in ``folder/data``) on ``port``."""

    folder: Path
    port: int = 5432

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def uri(self) -> str:
        """The backend URI, with the password (once the cluster exists)."""
        password = (self.folder / "password").read_text().strip()
        return f"postgresql://{USER}:{password}@{HOST}:{self.port}/{DATABASE}"

    def _as_owner(self) -> list[str]:
        """How to run a PostgreSQL binary: directly, or as the ``postgres`` user when we are root."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise LotteryError("PostgreSQL refuses to run as root and this machine has no `postgres` user to run "
                               "it as: run `make postgres` as another user") from None
        return ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, check: bool = True) -> int:
        folder = binaries()
        if folder is None:
            raise LotteryError("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: "
                               "install PostgreSQL (e.g. apt install postgresql), or point BACKEND_URI at a running one")
        done = subprocess.run([*self._as_owner(), str(folder / tool), *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            log = self.folder / "postgres.log"
            fatal = [ln for ln in (log.read_text(errors="replace").splitlines() if log.exists() else []) if "FATAL" in ln]
            why = fatal[-1].split("FATAL:", 1)[1] if fatal else said[-1] if said else f"exit status {done.returncode}"
            raise LotteryError(f"PostgreSQL's {tool} failed: {why.strip()} (its log: {log})")
        return done.returncode

    def _hand_over(self, path: Path) -> None:
        """Give ``path`` to the user PostgreSQL runs as."""
        if self._as_owner():
            entry = pwd.getpwnam("postgres")
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def create(self) -> None:
        """initdb: a cluster whose one user, ``lottery``, signs in with a random password."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.folder)
        secret = self.folder / "password"
        secret.write_text(secrets.token_urlsafe(18) + "\n")
        secret.chmod(0o600)
        self._hand_over(secret)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={secret}", "--auth-host=scram-sha-256",
                  "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions")

    def start(self) -> str:
        """Create the cluster if needed, start it (waiting until it takes connections) and create
        the ``lottery`` database if missing; the backend URI, also written to ``<folder>/uri``."""
        if self.running():
            raise LotteryError(f"PostgreSQL in {self.folder} is already running; stop it with `make postgres STOP=1`")
        if not (self.data / "PG_VERSION").exists():
            self.create()
        log = self.folder / "postgres.log"
        log.touch()
        self._hand_over(log)
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(log),
                  "-o", f"-h {HOST} -p {self.port} -k {self.data}")
        import psycopg

        with psycopg.connect(self.uri.rsplit("/", 1)[0] + "/postgres", autocommit=True, connect_timeout=10) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        uri = self.folder / "uri"
        uri.write_text(self.uri + "\n")
        uri.chmod(0o600)
        return self.uri

    def running(self) -> bool:
        return self.data.exists() and self._run("pg_ctl", "status", "-D", str(self.data), check=False) == 0

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))


@entry
def main(argv=None) -> int:
    """``python -m lottery postgres``: start (or ``--stop``) a local PostgreSQL for ``make server``."""
    p = ArgumentParser(prog="python -m lottery postgres", description=main.__doc__)
    p.add_argument("--dir", default=".lottery/postgres", help="its folder (data, log, and the URI with its password)")
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--stop", action="store_true", help="stop it (its data stay)")
    args = p.parse_args(argv)
    local = Local(Path(args.dir).absolute(), args.port)
    if args.stop:
        local.stop()
        print(f"PostgreSQL in {local.folder} stopped")
        return 0
    local.start()
    print(f"PostgreSQL listens on {HOST}:{args.port} (data in {local.data}); the tracking server on it:\n"
          f"  make server BACKEND_URI=$(cat {local.folder / 'uri'})\n"
          f"stop it with `make postgres STOP=1`")
    return 0
