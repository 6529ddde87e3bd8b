"""Shared fixtures: real TLC files, a loopback HTTP mirror, a real `mlflow server`, a real luigid."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import luigi
import luigi.configuration
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
TLC_DIR = ROOT.parent / "shared" / "data" / "tlc"
BIN = Path(sys.executable).parent


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


@pytest.fixture(scope="session")
def tlc_dir() -> Path:
    assert (TLC_DIR / "green_tripdata_2021-01.parquet").exists(), f"real TLC files expected in {TLC_DIR}"
    return TLC_DIR


SAMPLE_ROWS = 8000


def sample_month(source: Path, dest: Path, rows: int, seed: int = 42, shuffle_distance: bool = False) -> None:
    """A fixed random sample of `rows` trips of a TLC file, in the TLC's schema; `shuffle_distance` deals the trip
    distances out to the wrong trips, so nothing the model learns from them holds for another month."""
    rng = np.random.default_rng(seed)
    table = pq.read_table(source)
    table = table.take(np.sort(rng.choice(table.num_rows, rows, replace=False)))
    if shuffle_distance:
        column = table.schema.get_field_index("trip_distance")
        table = table.set_column(column, "trip_distance", table["trip_distance"].take(rng.permutation(rows)))
    pq.write_table(table, dest)


@pytest.fixture(scope="session")
def sampled_tlc(tmp_path_factory, tlc_dir) -> Path:
    """8000 real trips of each green month, so that tests that tune and train several times stay fast; in 2023-01
    the distances are shuffled, so its model is worse than 2021-01's on any validation month."""
    folder = tmp_path_factory.mktemp("sampled-tlc")
    for path in sorted(tlc_dir.glob("green_tripdata_*.parquet")):
        sample_month(path, folder / path.name, SAMPLE_ROWS, shuffle_distance="2023-01" in path.name)
    return folder


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def tlc_http(tlc_dir) -> str:
    """A loopback HTTP mirror of ../shared/data/tlc; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=tlc_dir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Service:
    service = mlflow_service(tmp_path_factory.mktemp("mlflow")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def luigid(tmp_path_factory) -> Service:
    service = luigid_service(tmp_path_factory.mktemp("luigid")).start()
    yield service
    service.stop()


SMALL_TUNING = {"max_evals": "2", "num_boost_round": "20", "early_stopping_rounds": "5", "startup_evals": "2",
                "course_reference": "false"}


def write_config(path: Path, sections: dict[str, dict[str, str]]) -> Path:
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                            for name, values in sections.items()))
    return path


def run_luigi(workdir: Path, config: Path, *args: str, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`luigi --module taxi.tasks ARGS` as an operator runs it: in `workdir` with the shipped luigi.cfg there,
    overrides via LUIGI_CONFIG_PATH."""
    if not (workdir / "luigi.cfg").exists():
        shutil.copyfile(ROOT / "luigi.cfg", workdir / "luigi.cfg")
    return subprocess.run([str(BIN / "luigi"), "--module", "taxi.tasks", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config), **(env or {})})


@pytest.fixture
def luigi_config(tmp_path, tlc_dir):
    """In-process Luigi settings for task tests: store under tmp_path, source = the real TLC folder, tiny tuning."""
    config = luigi.configuration.get_config()
    settings = {
        "taxi": {"store": str(tmp_path / "store"), "source": str(tlc_dir), "retry_backoff": "0.05"},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "mlartifacts")},
        "TuneHyperparams": {**SMALL_TUNING, "seed": "42"},  # listed keys are restored after the test
    }
    saved = {(s, k): config.get(s, k, None) for s, values in settings.items() for k in values}
    for section, values in settings.items():
        for key, value in values.items():
            if not config.has_section(section):
                config.add_section(section)
            config.set(section, key, value)
    yield settings
    for (section, key), value in saved.items():
        if value is None:
            config.remove_option(section, key)
        else:
            config.set(section, key, value)
