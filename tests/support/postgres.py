"""A real PostgreSQL server for the tests: Debian's `postgresql` package (`initdb`, `pg_ctl` under
/usr/lib/postgresql/*/bin) on 127.0.0.1, password (SCRAM) authentication only.

The password is random per instance. `initdb` reads it from a pipe and clients from PGPASSWORD (`env`), so it is in
no file and on no command line. Run as root, the server runs as the unprivileged `postgres` user of the package, in
a private folder of its own under the system temporary folder.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from tests.support.services import free_port

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=None)
USER = "taxi"
OS_USER = "postgres"  # the server's account when the tests run as root (PostgreSQL refuses to run as root)


class Postgres:
    """`initdb` + `pg_ctl start` on a free loopback port; `url(db)` is what MLflow and luigid are given."""

    def __init__(self) -> None:
        assert PG_BIN, "PostgreSQL expected under /usr/lib/postgresql (apt-get install postgresql; scripts/test does)"
        self.password = secrets.token_urlsafe(24)
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="taxi-postgres-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        if os.geteuid() == 0:
            owner = pwd.getpwnam(OS_USER)
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)

    @property
    def env(self) -> dict[str, str]:
        """What a client needs in its environment (libpq reads PGPASSWORD, so URLs carry no password)."""
        return {"PGPASSWORD": self.password}

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database`, as MLflow's --backend-store-uri and luigid's db_connection take it."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *argv: str, stdin: int | None = None) -> None:
        prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *argv], stdin=stdin, capture_output=True, text=True)
        assert done.returncode == 0, f"{argv[0]} exited {done.returncode}: {done.stderr[-2000:]}"

    def _password_pipe(self) -> int:
        """A pipe holding the password, readable as /dev/stdin by the server's account (root's pipes are not)."""
        read, write = os.pipe()
        if os.geteuid() == 0:
            os.fchown(read, pwd.getpwnam(OS_USER).pw_uid, -1)
        os.write(write, self.password.encode() + b"\n")
        os.close(write)
        return read

    def start(self) -> "Postgres":
        password = self._password_pipe()
        try:
            self._as_owner(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile=/dev/stdin",
                           "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions", stdin=password)
        finally:
            os.close(password)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder}"
        self._as_owner(str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "120", "-D", str(self.data), "-l", str(self.log),
                       "-o", options)
        return self

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname=database, password=self.password,
                               autocommit=True)

    def create_database(self, name: str) -> str:
        """Create `name` and return its URL."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def dump(self, database: str) -> str:
        """Every row of every table of `database`, as text (to grep for secrets)."""
        with self.connect(database) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public'")]
            return "\n".join(str(row) for table in tables
                             for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.SQL(table))))

    def stop(self) -> None:
        """Fast shutdown (running transactions are rolled back), then remove the data folder."""
        if (self.data / "postmaster.pid").exists():
            self._as_owner(str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data))
        shutil.rmtree(self.folder, ignore_errors=True)
