"""Shared fixtures: real TLC files, a loopback HTTP mirror, a real `mlflow server`, a real luigid (their helpers are
in tests/support/)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import luigi
import luigi.configuration
import pytest

from tests.support.paths import TLC_DIR
from tests.support.runs import SAMPLE_ROWS, SMALL_TUNING, sample_month
from tests.support.services import QuietHandler, Service, luigid_service, mlflow_service


@pytest.fixture(scope="session")
def tlc_dir() -> Path:
    assert (TLC_DIR / "green_tripdata_2021-01.parquet").exists(), f"real TLC files expected in {TLC_DIR}"
    return TLC_DIR



@pytest.fixture(scope="session")
def sampled_tlc(tmp_path_factory, tlc_dir) -> Path:
    """8000 real trips of each green month, so that tests that tune and train several times stay fast; in 2023-01
    the distances are shuffled, so its model is worse than 2021-01's on any validation month."""
    folder = tmp_path_factory.mktemp("sampled-tlc")
    for path in sorted(tlc_dir.glob("green_tripdata_*.parquet")):
        sample_month(path, folder / path.name, SAMPLE_ROWS, shuffle_distance="2023-01" in path.name)
    return folder


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
