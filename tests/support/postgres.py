"""A real PostgreSQL cluster on 127.0.0.1 for tests: its own data directory, port and socket.

Debian's PostgreSQL 15 (`initdb`/`pg_ctl` from /usr/lib/postgresql/15/bin). The server refuses
to run as root, so under root the cluster belongs to the `postgres` system user (created by the
Debian package) and lives in a directory of its own under /tmp. It fails loudly, with the
server's log, when it cannot start: a test needing it is never skipped.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.engine_process import free_port

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "'128MB'",
    "fsync": "on",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
}


class PostgresCluster:
    def __init__(self, fsync: bool = True) -> None:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"{BIN}/initdb not found: apt-get install postgresql (debian-packages.txt)")
        self.folder = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        self.fsync = fsync
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=passerelle dbname=postgres"

    def dsn(self, database: str = "passerelle") -> str:
        return f"postgresql://passerelle@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *command], check=False, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            shutil.chown(self.folder, self.user)
        init = self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "passerelle", "--auth=trust",
                         "-E", "UTF8", "--locale=C.UTF-8")
        if init.returncode:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        options = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.folder}'",
                   "fsync": "on" if self.fsync else "off"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in options.items())
        pg_ctl = str(BIN / "pg_ctl")
        started = self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        if started.returncode:
            raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}\n{self.logs()}")
        self.create_database("passerelle")
        return self

    def create_database(self, name: str) -> str:
        """A fresh database (each test its own); its DSN."""
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)

    def stop(self) -> None:
        stopped = self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        if stopped.returncode:
            raise RuntimeError(f"PostgreSQL did not stop:\n{stopped.stderr}\n{self.logs()}")
        shutil.rmtree(self.folder, ignore_errors=True)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no server log)"


_counter = iter(range(1, 1_000_000))


def fresh_database(cluster: PostgresCluster) -> str:
    """A new, empty database on the cluster; its DSN."""
    return cluster.create_database(f"t{os.getpid()}_{next(_counter)}_{int(time.time() * 1000) % 100000}")


_shared: PostgresCluster | None = None


def shared_cluster() -> PostgresCluster:
    """One cluster per test session (process), stopped at exit; tests take fresh databases on it."""
    global _shared  # noqa: PLW0603 - the session's one cluster
    if _shared is None:
        _shared = PostgresCluster(fsync=False).start()
        atexit.register(_shared.stop)
    return _shared
