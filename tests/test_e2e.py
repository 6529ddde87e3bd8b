"""End to end, as an operator runs it: `luigi --module taxi.tasks RegisterModel` against a real
`mlflow server`, a loopback HTTP mirror of the TLC files and (once) a real luigid."""

import json

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from tests.conftest import SMALL_TUNING, run_luigi, write_config

MONTH = ("--year", "2021", "--month", "1")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, tlc_http, mlflow_server):
    workdir = tmp_path_factory.mktemp("e2e")
    config = write_config(workdir / "e2e.cfg", {
        "taxi": {"source": tlc_http, "store": str(workdir / "data")},
        "mlflow": {"tracking_uri": mlflow_server.url},
        "TuneHyperparams": SMALL_TUNING,
    })
    first = run_luigi(workdir, config, "RegisterModel", *MONTH)
    mlflow.set_tracking_uri(mlflow_server.url)
    return workdir, config, first


def test_register_model_completes_and_registers_the_champion(e2e):
    workdir, _, first = e2e
    assert first.returncode == 0, first.stderr[-3000:]
    assert "8 ran successfully" in first.stderr
    client = MlflowClient()
    champion = client.get_model_version_by_alias("taxi-duration-green", "champion")
    registration = json.loads(next((workdir / "data" / "runs").rglob("registration.json")).read_text())
    assert int(champion.version) == registration["version"] and champion.run_id == registration["run_id"]
    run = client.get_run(champion.run_id)
    assert run.data.metrics["val_rmse"] == pytest.approx(registration["val_rmse"])
    assert run.data.tags["train.source_url"].startswith("http://127.0.0.1:")


def test_registered_model_predicts_from_raw_trip_fields(e2e):
    model = mlflow.pyfunc.load_model("models:/taxi-duration-green@champion")
    raw = pd.DataFrame([{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.01},
                        {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 12.5}])
    minutes = model.predict(raw)
    assert len(minutes) == 2 and 1 < minutes[0] < 60 and minutes[1] > minutes[0]


def test_second_run_executes_no_task(e2e):
    workdir, config, _ = e2e
    again = run_luigi(workdir, config, "RegisterModel", *MONTH)
    assert again.returncode == 0
    assert "1 complete ones were encountered" in again.stderr and "ran successfully" not in again.stderr
    assert len(MlflowClient().search_model_versions("name='taxi-duration-green'")) == 1


def test_runs_against_a_real_luigid(e2e, luigid):
    workdir, config, _ = e2e
    central = write_config(workdir / "central.cfg", {
        **{s: dict(v) for s, v in _sections(config).items()},
        "core": {"local_scheduler": "false", "default_scheduler_url": luigid.url},
    })
    done = run_luigi(workdir, central, "CleanMonth", "--year", "2023", "--month", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = requests.get(f"{luigid.url}/api/task_list", params={"data": json.dumps({"status": "DONE"})}).json()
    assert {"DownloadMonth_green_1_2023_", "CleanMonth_green_1_2023_"} <= {t.rsplit("_", 1)[0] + "_"
                                                                        for t in tasks["response"]}


def _sections(config):
    import configparser

    parser = configparser.ConfigParser()
    parser.read(config)
    return {s: dict(parser[s]) for s in parser.sections()}


@pytest.mark.parametrize("args,message", [
    (("--year", "2021", "--month", "13"), "month must be 1..12, got 13"),
    (("--year", "2021", "--month", "0"), "month must be 1..12, got 0"),
    (("--year", "2008", "--month", "5"), "year must be 2009.."),
    (("--year", "2021", "--month", "1", "--color", "blue"), "unknown color 'blue': use one of green, yellow"),
])
def test_bad_parameters_fail_before_any_work(e2e, args, message):
    workdir, config, _ = e2e
    bad = run_luigi(workdir, config, "RegisterModel", *args)
    assert bad.returncode != 0
    assert message in bad.stderr
    assert "running" not in bad.stderr


def test_unpublished_month_fails_at_once_naming_the_url(e2e, tlc_http):
    workdir, config, _ = e2e
    missing = run_luigi(workdir, config, "RegisterModel", "--year", "2020", "--month", "5")
    assert missing.returncode == 30  # [retcode] task_failed
    assert f"HTTP 404 for {tlc_http}/green_tripdata_2020-05.parquet: the month is not published" in missing.stderr
    assert "retry" not in missing.stderr.replace("retry_backoff", "")
    assert not list((workdir / "data" / "raw").rglob("*2020-05*"))
