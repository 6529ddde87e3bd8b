"""The MLflow server of systemd/mlflow.service as the unit runs it, basic-auth app included: its ExecStart= and
Environment= lines (and those of the cluster drop-in, on PostgreSQL) with the test's port and folders, its auth
config file as shipped (only the PostgreSQL port changed), the admin's password and the secret key in the
environment, as /etc/taxi/mlflow.env gives them. The pipeline's user is made by `python -m taxi.mlflow_users`, as
scripts/mlflow-users makes it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import NamedTuple

import requests

from tests.support.paths import BIN, ROOT
from tests.support.postgres import Postgres
from tests.support.services import Service, free_port, wait_until

UNIT = ROOT / "systemd" / "mlflow.service"
CLUSTER_DROP_IN = ROOT / "systemd" / "cluster" / "mlflow.service.d" / "postgresql.conf"
INSTALLED = "/opt/taxi/"
SHIPPED_PG = "127.0.0.1:5432"  # where the cluster profile's files expect PostgreSQL


class Login(NamedTuple):
    user: str
    password: str

    @property
    def env(self) -> dict[str, str]:
        """What an MLflow client of this user has in its environment."""
        return {"MLFLOW_TRACKING_USERNAME": self.user, "MLFLOW_TRACKING_PASSWORD": self.password}


def unit_settings(*units: Path) -> tuple[str, dict[str, str]]:
    """(the last ExecStart= command, every Environment= setting) of `units`, read in order as systemd merges them."""
    command, env = "", {}
    for unit in units:
        for key, value in re.findall(r"^(ExecStart|Environment)=(.*)$", unit.read_text(), re.M):
            if key == "ExecStart":
                command = value or command
            else:
                name, _, setting = value.partition("=")
                env[name] = setting
    return command, env


class AuthMlflow(Service):
    """systemd/mlflow.service on a free port in `workdir` (its state directory); with `pg`, the cluster drop-in's
    command and auth config on that PostgreSQL (databases mlflow and mlflow_auth), artifacts where `artifacts`
    says (the drop-in's bucket needs `env` with the S3 endpoint and keys)."""

    def __init__(self, workdir: Path, pg: Postgres | None = None, artifacts: str | None = None,
                 env: dict[str, str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.admin = Login("admin", secrets.token_urlsafe(24))
        self.taxi = Login("taxi", secrets.token_urlsafe(24))
        self.secret_key = secrets.token_hex(32)
        port = free_port()
        command, settings = unit_settings(UNIT, *([CLUSTER_DROP_IN] if pg else []))
        shipped_ini = ROOT / settings["MLFLOW_AUTH_CONFIG_PATH"].removeprefix(INSTALLED)
        self.auth_config = workdir / shipped_ini.name
        pg_address = f"127.0.0.1:{pg.port}" if pg else SHIPPED_PG
        self.auth_config.write_text(shipped_ini.read_text().replace(SHIPPED_PG, pg_address))
        if pg:
            pg.create_database("mlflow")
            pg.create_database("mlflow_auth")
        command = (command.replace(f"{INSTALLED}.venv/bin/", f"{BIN}/").replace("${MLFLOW_PORT}", str(port))
                   .replace("%S/mlflow", str(workdir)).replace(SHIPPED_PG, pg_address))
        if artifacts:
            command = re.sub(r"--artifacts-destination \S+", f"--artifacts-destination {artifacts}", command)
        server_env = {**{k: v for k, v in settings.items() if k != "MLFLOW_PORT"},
                      "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
                      "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin.password,
                      "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key, **(pg.env if pg else {}), **(env or {})}
        super().__init__("mlflow server (basic-auth)", command.split(), port, "/health", workdir / "mlflow.log",
                         server_env)

    @property
    def secrets(self) -> dict[str, str]:
        return {"taxi password": self.taxi.password, "admin password": self.admin.password,
                "secret key": self.secret_key}

    def start(self) -> "AuthMlflow":
        """Start in the state directory, as the unit's WorkingDirectory= does."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env={**env, **self.env}, start_new_session=True)
        wait_until(lambda: self.proc.poll() is None and requests.get(self.url + self.health, timeout=2).ok,
                   f"{self.name} ({self.log})", timeout=120)
        return self

    def make_users(self, config: Path) -> subprocess.CompletedProcess:
        """`python -m taxi.mlflow_users` (scripts/mlflow-users) with profile `config` and the passwords in the
        environment."""
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin.password,
               **self.taxi.env}
        return subprocess.run([str(BIN / "python"), "-m", "taxi.mlflow_users"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    def as_user(self, login: Login | None) -> requests.Session:
        """A session of the REST API logged in as `login` (None: no credentials)."""
        session = requests.Session()
        session.auth = tuple(login) if login else None
        return session
