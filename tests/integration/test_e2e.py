"""End to end, as an operator runs it: `luigi --module taxi.tasks RegisterModel` against a real
`mlflow server`, a loopback HTTP mirror of the TLC files and (once) a real luigid."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import xgboost as xgb
from mlflow.tracking import MlflowClient

from taxi import data, features, layout, metrics
from taxi.registry import model_name
from tests.support.flaky_http import UNAVAILABLE, FlakyMirror
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import mlflow_service
from tests.support.store import one_file, run_file

MONTH = ("--year", "2021", "--month", "1")
MODEL = model_name("green")


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


def test_register_model_completes_and_registers_the_champion(e2e, tlc_http):
    workdir, _, first = e2e
    assert first.returncode == 0, first.stderr[-3000:]
    assert "8 ran successfully" in first.stderr
    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    registration = json.loads(run_file(workdir / "data", layout.REGISTRATION).read_text())
    assert int(champion.version) == registration["version"] and champion.run_id == registration["run_id"]
    run = client.get_run(champion.run_id)
    # both records hold the RMSE of the stored booster, re-scored here on the stored validation matrix
    store = workdir / "data"
    X_valid, y_valid = features.load_matrix(str(one_file(store, layout.FEATURES, color="green", ym="2021-01",
                                                         name="valid.npz")))
    booster = xgb.Booster()
    booster.load_model(bytearray(run_file(store, "booster.ubj").read_bytes()))
    rmse = metrics.rmse(y_valid, booster.inplace_predict(X_valid))
    assert registration["val_rmse"] == pytest.approx(rmse) and run.data.metrics["val_rmse"] == pytest.approx(rmse)
    assert run.data.tags["train.source_url"] == f"{tlc_http}/green_tripdata_2021-01.parquet"


TRIP = {"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.01, "lpep_pickup_datetime": "2021-01-05 08:10"}


def test_registered_model_predicts_from_raw_trip_fields_and_the_pickup_time(e2e):
    """A month's raw rows as they are: the TLC's own pickup column, as a timestamp or an ISO string; the clock
    matters (the same trip at another hour and day is predicted otherwise)."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.metadata.get_input_schema().input_names() == [
        "PULocationID", "DOLocationID", "trip_distance", "lpep_pickup_datetime"]
    raw = pd.DataFrame([TRIP, {**TRIP, "PULocationID": 74, "DOLocationID": 75, "trip_distance": 12.5},
                        {**TRIP, "lpep_pickup_datetime": "2021-01-10T03:10:00"}])
    minutes = model.predict(raw)
    assert len(minutes) == 3 and 1 < minutes[0] < 60 and minutes[1] > minutes[0] and minutes[2] != minutes[0]
    as_timestamps = raw.assign(lpep_pickup_datetime=pd.to_datetime(raw["lpep_pickup_datetime"], format="ISO8601"))
    np.testing.assert_array_equal(model.predict(as_timestamps), minutes)
    # the same wall-clock time given with New York's offset is the same trip
    offset = raw.assign(lpep_pickup_datetime=["2021-01-05T08:10:00-05:00", "2021-01-05T08:10:00-05:00",
                                              "2021-01-10T03:10:00-05:00"])
    np.testing.assert_array_equal(model.predict(offset), minutes)


def test_a_row_without_its_pickup_time_is_refused_naming_the_column(e2e):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    with pytest.raises(Exception, match="lpep_pickup_datetime"):
        model.predict(pd.DataFrame([{k: v for k, v in TRIP.items() if k != "lpep_pickup_datetime"}]))
    for missing in (None, "not a time"):
        with pytest.raises(Exception, match=r"lpep_pickup_datetime has no pickup time in 1 row\(s\), the first at "
                                            r"position 1"):
            model.predict(pd.DataFrame([TRIP, {**TRIP, "lpep_pickup_datetime": missing}]))


def test_registered_model_carries_only_the_serving_code_and_predicts_with_that_copy(e2e, tmp_path):
    """The logged model's code is the pyfunc, the features it computes, their column names and the zone rule,
    nothing else of taxi; in a fresh process its own copy of that code (not the checkout's) loads and predicts."""
    model = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path / "model")))
    code = model / "code"
    assert sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  ) == ["taxi/__init__.py", "taxi/columns.py", "taxi/features.py", "taxi/serving.py",
                        "taxi/zones.py"]
    script = ("import sys, json, mlflow, pandas as pd\n"
              "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "import taxi\n"
              "print(taxi.__file__)\n"
              "print(model.predict(pd.DataFrame([json.loads(sys.argv[2])]))[0])")
    done = subprocess.run([sys.executable, "-c", script, str(model), json.dumps(TRIP)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONNOUSERSITE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_from, minutes = done.stdout.split()
    assert Path(loaded_from).is_relative_to(code)
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert float(minutes) == pytest.approx(float(champion.predict(pd.DataFrame([TRIP]))[0]), rel=1e-6)


def test_served_model_predicts_what_the_booster_predicts_on_the_training_time_matrix(e2e):
    """Row by row on the validation month's selection rows: the pyfunc on raw trip fields (zone ids as a user has
    them: ints, floats, strings; the pickup time as a timestamp or an ISO string) gives the booster's predictions on
    the feature matrix BuildFeatures made for training."""
    workdir, _, _ = e2e
    store = workdir / "data"
    X_valid, _ = features.load_matrix(str(one_file(store, layout.FEATURES, color="green", ym="2021-01",
                                                   name="valid.npz")))
    booster = xgb.Booster()
    booster.load_model(bytearray(run_file(store, "booster.ubj").read_bytes()))
    expected = booster.inplace_predict(X_valid)
    valid = pd.read_parquet(one_file(store, layout.CLEAN, color="green", ym="2021-02"))
    assert len(valid) == 61_921
    trips = valid.loc[~data.gate_rows(valid, 0.5), ["PULocationID", "DOLocationID", "trip_distance",
                                                    "pickup_datetime"]]
    trips = trips.rename(columns={"pickup_datetime": "lpep_pickup_datetime"})
    raw = trips.astype({"PULocationID": "int64", "DOLocationID": "int64"})
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert len(raw) == len(expected)
    np.testing.assert_allclose(model.predict(raw), expected, rtol=1e-6)
    as_floats = raw.astype({"PULocationID": "float64", "DOLocationID": "float64"})  # a month with missing zones
    np.testing.assert_allclose(model.predict(as_floats), expected, rtol=1e-6)
    as_strings = trips.assign(lpep_pickup_datetime=trips["lpep_pickup_datetime"].astype(str))
    np.testing.assert_allclose(model.predict(as_strings), expected, rtol=1e-6)  # zones as cleaning stores them


def test_second_run_executes_no_task(e2e):
    workdir, config, _ = e2e
    again = run_luigi(workdir, config, "RegisterModel", *MONTH)
    assert again.returncode == 0
    assert "1 complete ones were encountered" in again.stderr and "ran successfully" not in again.stderr
    assert len(MlflowClient().search_model_versions(f"name='{MODEL}'")) == 1


def test_runs_against_a_real_luigid(e2e, luigid):
    workdir, config, _ = e2e
    central = write_config(workdir / "central.cfg", {
        **{s: dict(v) for s, v in _sections(config).items()},
        "core": {"local_scheduler": "false", "default_scheduler_url": luigid.url},
    })
    done = run_luigi(workdir, central, "CleanMonth", "--year", "2023", "--month", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    tasks = requests.get(f"{luigid.url}/api/task_list", params={"data": json.dumps({"status": "DONE"})}).json()
    done = {(t["name"], t["params"]["year"], t["params"]["month"]) for t in tasks["response"].values()}
    assert {("DownloadMonth", "2023", "1"), ("CleanMonth", "2023", "1")} <= done


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


def test_credentials_in_the_tracking_uri_and_the_source_url_are_recorded_nowhere(tmp_path, sampled_tlc):
    """A password in MLFLOW_TRACKING_URI, and a source URL whose only secrets are its presigned query (a 503 first, so
    a retry is logged; a month the source lacks; run-monthly probing it, once failing on a 503): none of them in any
    output, log, target, report, MLflow record or the server's database; the URLs are recorded with *** in their
    place. Every other form of URL secret: test_secrets_in_a_source_url_are_recorded_nowhere."""
    planted = {name: f"{name}-{secrets.token_hex(8)}" for name in ("trackingpass", "credential", "signature")}
    server = mlflow_service(tmp_path / "mlflow").start()
    try:
        with FlakyMirror(sampled_tlc) as mirror:
            source = (f"{mirror.url}/green_tripdata_{{year}}-{{month:02d}}.parquet?X-Amz-Credential="
                      f"{planted['credential']}&X-Amz-Signature={planted['signature']}")
            env = {"TAXI_TEST_SOURCE": source,
                   "MLFLOW_TRACKING_URI": f"http://taxi:{planted['trackingpass']}@127.0.0.1:{server.port}"}
            config = write_config(tmp_path / "secret-free.cfg", {
                "taxi": {"source": "${TAXI_TEST_SOURCE}", "store": str(tmp_path / "store"), "retry_backoff": "0.1"},
                "TuneHyperparams": SMALL_TUNING, "core": private_lock(tmp_path)})
            mirror.script = [UNAVAILABLE]
            done = run_luigi(tmp_path, config, "RegisterModel", "--year", "2021", "--month", "1", env=env)
            missing = run_luigi(tmp_path, config, "DownloadMonth", "--year", "2020", "--month", "5", env=env)
            nothing_published = run_monthly(tmp_path, config, "2020-08-01", env)
            mirror.script = [UNAVAILABLE]
            probe_failed = run_monthly(tmp_path, config, "2021-03-20", env)
        trained = json.loads(run_file(tmp_path / "store", "train.json").read_text())
        tags = MlflowClient(tracking_uri=server.url).get_run(trained["run_id"]).data.tags  # as the server has them
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert missing.returncode == 30, missing.stderr[-3000:]
    query = "X-Amz-Credential=***&X-Amz-Signature=***"
    redacted = f"{mirror.url}/green_tripdata_2021-02.parquet?{query}"
    assert f"download of {redacted} failed (HTTP 503); retry 1/4 in 0.1s" in done.stderr
    assert f"HTTP 404 for {redacted.replace('2021-02', '2020-05')}: the month is not published" in missing.stderr
    assert nothing_published.returncode == 20, nothing_published.stderr[-3000:]  # [retcode] missing_data
    assert f"{redacted.replace('2021-02', '2020-07')} is not published" in nothing_published.stderr
    assert (f"no green month with its following month published at {mirror.url}/green_tripdata_{{year}}-"
            f"{{month:02d}}.parquet?{query} among") in nothing_published.stderr
    assert probe_failed.returncode != 0 and f"TransientSourceError: HTTP 503 from {redacted}" in probe_failed.stderr
    registration = json.loads(run_file(tmp_path / "store", layout.REGISTRATION).read_text())
    assert registration["tracking_uri"] == server.url
    for ym in ("2021-01", "2021-02"):
        shown = redacted.replace("2021-02", ym)
        assert json.loads(one_file(tmp_path / "store", layout.RAW_META, color="green", ym=ym).read_text())[
            "source_url"] == shown
        assert json.loads(one_file(tmp_path / "store", layout.CLEAN_STATS, color="green", ym=ym).read_text())[
            "source_url"] == shown
    report = run_file(tmp_path / "store", layout.REPORT).read_text()
    assert f"`{redacted.replace('2021-02', '2021-01')}`" in report
    assert (tags["train.source_url"], tags["valid.source_url"]) == (redacted.replace("2021-02", "2021-01"), redacted)
    produced = {str(path): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    produced.update({f"{name} {stream}": getattr(ran, stream).encode()
                     for name, ran in (("run", done), ("missing", missing), ("nothing published", nothing_published),
                                       ("probe failed", probe_failed)) for stream in ("stdout", "stderr")})
    assert any("mlflow.db" in name for name in produced) and any("MLmodel" in name for name in produced)
    leaks = [f"{name}: {what}" for name, content in produced.items() for what, secret in planted.items()
             if secret.encode() in content]
    assert leaks == []


def run_monthly(workdir: Path, config: Path, as_of: str, env: dict) -> subprocess.CompletedProcess:
    """scripts/run-monthly's program (`python -m taxi.monthly green --as-of AS_OF`) as a timer runs it."""
    return subprocess.run([sys.executable, "-m", "taxi.monthly", "green", "--as-of", as_of], cwd=workdir,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config), **env})


# How a source URL carries its secrets, and how it must be recorded: {netloc} is the mirror's host and port,
# {file} the month's file, the rest are secrets the test plants. The query-only form is the full run above.
SOURCE_FORMS = {
    "user-password": ("127.0.0.1", "http://taxi:{password}@{netloc}/{file}", "http://***@{netloc}/{file}"),
    "user-only": ("127.0.0.1", "http://{token}@{netloc}/{file}", "http://***@{netloc}/{file}"),
    "user-password-and-query": (
        "127.0.0.1", "http://taxi:{password}@{netloc}/{file}?X-Amz-Credential={credential}&X-Amz-Signature={signature}",
        "http://***@{netloc}/{file}?X-Amz-Credential=***&X-Amz-Signature=***"),
    "ipv6-user-password-and-token": ("::1", "http://taxi:{password}@{netloc}/{file}?{token}",
                                     "http://***@{netloc}/{file}?***"),
}


@pytest.mark.parametrize("host,source,recorded", SOURCE_FORMS.values(), ids=SOURCE_FORMS)
def test_secrets_in_a_source_url_are_recorded_nowhere(tmp_path, sampled_tlc, host, source, recorded):
    """CleanMonth from a mirror (a 503 first, so a retry is logged) and a month the mirror lacks, with secrets in the
    source URL: the URL is logged, and recorded in the raw month's and the cleaned month's JSON, with *** in their
    place (its port and IPv6 host kept), and no secret is in any file the runs wrote or printed."""
    planted = {name: f"{name}-{secrets.token_hex(8)}" for name in ("password", "token", "credential", "signature")}
    config = write_config(tmp_path / "source.cfg", {
        "taxi": {"source": "${TAXI_TEST_SOURCE}", "store": str(tmp_path / "store"), "retry_backoff": "0.1",
                 "download_retries": "1"}, "core": private_lock(tmp_path)})
    with FlakyMirror(sampled_tlc, host=host) as mirror:
        netloc = mirror.url.split("//")[1]
        env = {"TAXI_TEST_SOURCE": source.format(netloc=netloc, file="green_tripdata_{year}-{month:02d}.parquet",
                                                 **planted)}
        mirror.script = [UNAVAILABLE]  # the month the mirror lacks takes nothing from the script
        cleaned = LuigiProcess(tmp_path, config, "CleanMonth", *MONTH, name="clean", env=env)
        missing = LuigiProcess(tmp_path, config, "DownloadMonth", "--year", "2020", "--month", "5", name="missing",
                               env=env)
        assert cleaned.finish() == 0, cleaned.log[-3000:]
        assert missing.finish() == 30, missing.log[-3000:]
    shown = recorded.format(netloc=netloc, file="green_tripdata_2021-01.parquet")
    assert f"download of {shown} failed (HTTP 503); retry 1/1 in 0.1s" in cleaned.log
    assert f"HTTP 404 for {shown.replace('2021-01', '2020-05')}: the month is not published" in missing.log
    for template in (layout.RAW_META, layout.CLEAN_STATS):
        assert json.loads(one_file(tmp_path / "store", template, color="green", ym="2021-01").read_text())[
            "source_url"] == shown
    leaks = [f"{path}: {name}" for path in tmp_path.rglob("*") if path.is_file()
             for name, secret in planted.items() if secret.encode() in path.read_bytes()]
    assert leaks == []


def _tuned(workdir, ym: str) -> dict:
    return json.loads(one_file(workdir / "data", layout.TUNING, color="green", ym=ym).read_text())


def test_tuning_starts_from_the_champion_and_a_finished_month_stays_done_under_a_new_champion(e2e):
    """2021-01 had no champion (cold start); 2023-01 starts from v1's logged parameters, trial 0 tagged as the
    warm start; each report has the tuning plot. Rerunning 2021-01 after the champion moves runs nothing."""
    workdir, config, _ = e2e
    client = MlflowClient()
    cold = _tuned(workdir, "2021-01")
    assert cold["warm_start"] == {"version": None, "point": None, "note": "cold start: no champion"}
    assert not cold["history"][0]["warm_start"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    champion_params = client.get_run(champion.run_id).data.params

    warm_run = run_luigi(workdir, config, "RegisterModel", "--year", "2023", "--month", "1")
    assert warm_run.returncode == 0, warm_run.stderr[-3000:]
    warm = _tuned(workdir, "2023-01")
    assert warm["warm_start"]["version"] == int(champion.version)
    first = warm["history"][0]
    assert first["warm_start"] and {k: str(v) for k, v in first["params"].items()} == {
        k: champion_params[k] for k in first["params"]}
    assert f"warm start: champion v{champion.version}'s parameters" in warm_run.stderr
    tuning_run = client.search_runs([client.get_experiment_by_name("taxi-duration").experiment_id],
                                    "tags.`taxi.stage` = 'tuning'", order_by=["start_time DESC"])[0]
    assert tuning_run.data.params["warm_start_version"] == champion.version
    for ym in ("2021-01", "2023-01"):
        assert "![tuning](tuning.png)" in run_file(workdir / "data", layout.REPORT, ym=ym).read_text()
        assert run_file(workdir / "data", layout.TUNING_PLOT, ym=ym).read_bytes().startswith(b"\x89PNG")
    assert "warm start: champion v" in run_file(workdir / "data", layout.REPORT, ym="2023-01").read_text()

    newest = max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert newest != int(champion.version)  # the champion the 2021-01 search could have started from is gone
    client.set_registered_model_alias(MODEL, "champion", str(newest))
    before = _tuned(workdir, "2021-01")
    for task in ("RegisterModel", "TuneHyperparams"):  # the search itself too, not only the task that needs it
        again = run_luigi(workdir, config, task, *MONTH)
        assert again.returncode == 0 and "ran successfully" not in again.stderr, again.stderr[-2000:]
    assert _tuned(workdir, "2021-01") == before
