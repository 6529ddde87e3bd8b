"""Real server processes on 127.0.0.1 for the tests: a free port, waiting for a server, `mlflow server`, luigid."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.paths import BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


class Service:
    """A real server process on 127.0.0.1, started and stopped by a fixture."""

    def __init__(self, name: str, argv: list[str], port: int, health: str, log: Path, env: dict | None = None):
        self.name, self.argv, self.port, self.health, self.log, self.env = name, argv, port, health, log, env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Service":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(self.env or {})}, start_new_session=True)
        wait_until(lambda: self.proc.poll() is None and requests.get(self.url + self.health, timeout=2).ok,
                   f"{self.name} ({self.log})")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def mlflow_service(workdir: Path, port: int | None = None) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    return Service("mlflow server", [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db", "--artifacts-destination", str(workdir / "artifacts"),
    ], port, "/health", workdir / "mlflow.log", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def luigid_service(workdir: Path, port: int | None = None) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = workdir / "luigid.cfg"
    config.write_text(f"[scheduler]\nrecord_task_history = true\nstate_path = {workdir}/state.pickle\n"
                      f"[task_history]\ndb_connection = sqlite:///{workdir}/history.db\n")
    return Service("luigid", [sys.executable, "-m", "taxi.luigid", "--address", "127.0.0.1", "--port", str(port),
                              "--state-path", str(workdir / "state.pickle"), "--logdir", str(workdir)],
                   port, "/api/graph", workdir / "luigid.log", env={"LUIGI_CONFIG_PATH": str(config)})


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
