"""The pipeline with `store = s3://…` (the shipped config/s3.cfg profile) against a real SeaweedFS server on
127.0.0.1: same model as a local run, idempotent reruns, a clear failure while the store is down, an S3
mirror as the source, MLflow artifacts in the same bucket, and the secret key nowhere."""

from __future__ import annotations

import configparser
import fnmatch
import io
import json
import re
import secrets
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from taxi import layout
from taxi.data import clean_trips, read_trips
from taxi.features import load_matrix
from taxi.registry import model_name
from tests.support.luigi_process import PAUSED, LuigiProcess
from tests.support.paths import BIN, ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.s3server import SeaweedS3
from tests.support.services import Service, free_port
from tests.support.store import match, pattern

MONTH = ("--year", "2021", "--month", "1")
MODEL = model_name("green")
PROFILES = ROOT / "config"


def profile(name: str) -> dict[str, dict[str, str]]:
    """The sections of a shipped config/<name>.cfg profile."""
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(PROFILES / f"{name}.cfg"), f"config/{name}.cfg is missing"
    return {section: dict(parser[section]) for section in parser.sections()}


def bucket_and_prefix(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.strip("/") + "/"


def own_lock(workdir: Path) -> dict[str, str]:
    """Luigi's one-run-per-command lock kept in `workdir`, so that runs of other test sessions do not block."""
    return {"lock_pid_dir": str(workdir)}


def ran_tasks(stderr: str) -> set[str]:
    """The tasks the run's worker finished, as "CleanMonth 2023-01" (family and month)."""
    return {f"{family} {year}-{int(month):02d}"
            for family, year, month in re.findall(r" done +(\w+)\(color=\w+, year=(\d+), month=(\d+)", stderr)}


@contextmanager
def tracking(uri: str):
    """mlflow's module-level tracking URI pointed at `uri` for the block, then restored."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield MlflowClient(uri)
    finally:
        mlflow.set_tracking_uri(before)


class S3Pipeline:
    """`luigi --module taxi.tasks …` with the s3 profile pointed at the test server; every output is kept."""

    def __init__(self, workdir: Path, s3: SeaweedS3, mlflow_url: str):
        self.workdir, self.s3, self.mlflow_url = workdir, s3, mlflow_url
        sections = profile("s3")
        sections["s3"]["endpoint_url"] = s3.endpoint
        sections["mlflow"]["tracking_uri"] = mlflow_url
        sections["TuneHyperparams"] = SMALL_TUNING
        sections["core"] = own_lock(workdir)
        self.sections = sections
        self.config = write_config(workdir / "s3.cfg", sections)
        self.bucket, self.prefix = bucket_and_prefix(sections["taxi"]["store"])
        self.source = sections["taxi"]["source"].rstrip("/")
        self.outputs: list[str] = []

    def variant(self, name: str, taxi: dict[str, str]) -> Path:
        """This configuration with some `[taxi]` settings changed."""
        return write_config(self.workdir / f"{name}.cfg", {**self.sections, "taxi": {**self.sections["taxi"], **taxi}})

    def run(self, *args: str, env: dict | None = None, config: Path | None = None) -> subprocess.CompletedProcess:
        done = run_luigi(self.workdir, config or self.config, *args, env={**self.s3.env, **(env or {})}, timeout=600)
        self.outputs.append(done.stdout + done.stderr)
        return done

    def objects(self) -> dict[str, str]:
        """Every object of the store: path relative to the store prefix -> ETag."""
        return {key[len(self.prefix):]: etag for key, etag in self.s3.keys(self.bucket, self.prefix).items()}

    def read(self, relpath: str) -> bytes:
        return self.s3.client().get_object(Bucket=self.bucket, Key=self.prefix + relpath)["Body"].read()

    def delete(self, relpath: str) -> None:
        self.s3.client().delete_object(Bucket=self.bucket, Key=self.prefix + relpath)

    def run_dir(self) -> str:
        return next(path for path in self.objects() if path.endswith("registration.json")).rsplit("/", 1)[0]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> SeaweedS3:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mirror(s3, tlc_dir) -> str:
    """The profile's bucket, with the TLC files uploaded under the profile's source prefix (the team mirror)."""
    source = profile("s3")["taxi"]["source"]
    bucket, prefix = bucket_and_prefix(source)
    s3.create_bucket(bucket)
    for path in sorted(tlc_dir.glob("*.parquet")):
        s3.client().upload_file(str(path), bucket, prefix + path.name)
    return source


@pytest.fixture(scope="module")
def artifacts(s3, mirror) -> str:
    """MLflow's artifacts destination: the profile's bucket, beside the store."""
    return f"s3://{bucket_and_prefix(profile('s3')['taxi']['store'])[0]}/mlartifacts"


@pytest.fixture(scope="module")
def mlflow_s3(tmp_path_factory, s3, artifacts) -> Service:
    """`mlflow server --artifacts-destination s3://…` on the same S3 server (MLFLOW_S3_ENDPOINT_URL)."""
    workdir = tmp_path_factory.mktemp("mlflow-s3")
    port = free_port()
    service = Service("mlflow server (artifacts in S3)", [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db", "--artifacts-destination", artifacts,
    ], port, "/health", workdir / "mlflow.log",
        env={"MLFLOW_S3_ENDPOINT_URL": s3.endpoint, **s3.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, tlc_dir) -> Path:
    """The reference: the same pipeline and settings with the shipped local profile (files, sqlite MLflow)."""
    workdir = tmp_path_factory.mktemp("local")
    sections = profile("local")
    sections["taxi"]["source"] = str(tlc_dir)
    sections["TuneHyperparams"] = SMALL_TUNING
    sections["core"] = own_lock(workdir)
    done = run_luigi(workdir, write_config(workdir / "local.cfg", sections), "RegisterModel", *MONTH)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir / sections["taxi"]["store"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, s3, mirror, mlflow_s3) -> S3Pipeline:
    return S3Pipeline(tmp_path_factory.mktemp("s3-run"), s3, mlflow_s3.url)


@pytest.fixture(scope="module")
def first_run(pipeline) -> subprocess.CompletedProcess:
    return pipeline.run("RegisterModel", *MONTH)


def test_s3_store_registers_the_same_model_as_a_local_run(first_run, pipeline, local_store):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    assert "8 ran successfully" in first_run.stderr
    local_files = {path.relative_to(local_store).as_posix() for path in local_store.rglob("*") if path.is_file()}
    objects = pipeline.objects()
    assert set(objects) == local_files and len(objects) == 22  # registry.json among them
    run_dir = pipeline.run_dir()
    month = {"color": "green", "ym": "2021-01"}
    for wanted in (layout.raw("green", 2021, 2)["data"], pattern(layout.CLEAN, **month),
                   pattern(layout.FEATURES, **month, name="train.npz"), f"{run_dir}/booster.ubj",
                   f"{run_dir}/report.md"):
        assert fnmatch.filter(objects, wanted), wanted
    registration = json.loads(pipeline.read(f"{run_dir}/registration.json"))
    local_registration = json.loads((local_store / run_dir / "registration.json").read_text())
    assert registration["val_rmse"] == local_registration["val_rmse"]
    assert registration["version"] == 1 and registration["decision"] == "champion"
    assert not (pipeline.workdir / "data").exists()  # nothing of the store landed on local disk


def test_source_is_read_from_the_s3_mirror(first_run, pipeline, tlc_dir):
    raw = layout.raw("green", 2021, 1)["data"]
    assert pipeline.read(raw) == (tlc_dir / "green_tripdata_2021-01.parquet").read_bytes()
    meta = json.loads(pipeline.read(raw + ".json"))
    assert meta["source_url"] == f"{pipeline.source}/green_tripdata_2021-01.parquet" and meta["rows"] == 76_518


def test_mlflow_keeps_the_model_in_the_same_bucket(first_run, pipeline, s3, artifacts):
    registration = json.loads(pipeline.read(f"{pipeline.run_dir()}/registration.json"))
    bucket, prefix = bucket_and_prefix(artifacts)
    keys = s3.keys(bucket, prefix)
    run_keys = {key for key in keys if f"/{registration['run_id']}/artifacts/" in key}
    assert {"report/report.md", "report/residuals.png", "preprocessor/categories.json"} <= {
        key.split("/artifacts/", 1)[1] for key in run_keys}
    assert any(key.endswith("/MLmodel") for key in keys)
    with tracking(pipeline.mlflow_url) as client:
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.run_id == registration["run_id"]
        assert client.get_run(champion.run_id).data.metrics["val_rmse"] == pytest.approx(registration["val_rmse"])
        # the test process has no S3 credentials: the server serves the model from the bucket
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    minutes = model.predict(pd.DataFrame([
        {"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.01, "lpep_pickup_datetime": "2021-01-05 08:10"},
        {"PULocationID": 74, "DOLocationID": 75, "trip_distance": 12.5, "lpep_pickup_datetime": "2021-01-05 08:10"}]))
    assert 1 < minutes[0] < 60 and minutes[1] > minutes[0]
    assert not (pipeline.workdir / "mlartifacts").exists()


def test_second_run_executes_no_task(first_run, pipeline):
    before = pipeline.objects()
    again = pipeline.run("RegisterModel", *MONTH)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 complete ones were encountered" in again.stderr and ran_tasks(again.stderr) == set()
    assert pipeline.objects() == before


def test_deleted_object_reruns_only_the_task_that_wrote_it(first_run, pipeline):
    [train_npz] = fnmatch.filter(pipeline.objects(), pattern(layout.FEATURES, color="green", ym="2021-01",
                                                              name="train.npz"))
    X_before, y_before = load_matrix(io.BytesIO(pipeline.read(train_npz)))
    pipeline.delete(train_npz)
    rebuilt = pipeline.run("BuildFeatures", *MONTH)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert ran_tasks(rebuilt.stderr) == {"BuildFeatures 2021-01"}
    X_after, y_after = load_matrix(io.BytesIO(pipeline.read(train_npz)))
    np.testing.assert_array_equal(X_after, X_before)  # the clock set's dense matrix, unseen zones NaN in both
    assert np.array_equal(y_after, y_before)

    report = f"{pipeline.run_dir()}/report.md"
    pipeline.delete(report)
    reported = pipeline.run("RegisterModel", *MONTH)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert ran_tasks(reported.stderr) == {"RegisterModel 2021-01"}
    assert "v1: champion" in pipeline.read(report).decode()
    with tracking(pipeline.mlflow_url) as client:
        assert len(client.search_model_versions(f"name='{MODEL}'")) == 1  # found, not registered again


def test_month_missing_from_the_s3_mirror_fails_naming_it(first_run, pipeline):
    missing = pipeline.run("DownloadMonth", "--year", "2020", "--month", "5")
    assert missing.returncode == 30  # [retcode] task_failed
    url = f"{pipeline.source}/green_tripdata_2020-05.parquet"
    assert f"{url} does not exist: the month is not in the S3 mirror" in missing.stderr
    assert not [path for path in pipeline.objects() if "2020-05" in path]


def test_wrong_secret_is_refused_and_writes_nothing(first_run, pipeline):
    before = pipeline.objects()
    refused = pipeline.run("CleanMonth", "--year", "2023", "--month", "2", env={"AWS_SECRET_ACCESS_KEY": "wrong-key"})
    assert refused.returncode == 35, refused.stderr[-3000:]  # [retcode] scheduling_error: complete() failed
    assert f"S3 endpoint {pipeline.s3.endpoint} refused access to s3://" in refused.stderr
    assert "403 Forbidden): check the credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in refused.stderr
    assert "wrong-key" not in refused.stderr
    assert pipeline.objects() == before


def test_missing_bucket_is_named(first_run, pipeline):
    config = pipeline.variant("no-bucket", {"store": "s3://no-such-bucket/store"})
    missing = pipeline.run("CleanMonth", "--year", "2023", "--month", "2", config=config)
    assert missing.returncode == 35, missing.stderr[-3000:]
    named = re.search(rf"the bucket of s3://no-such-bucket/store/(\S+) does not exist at S3 endpoint "
                      rf"{re.escape(pipeline.s3.endpoint)}: create it", missing.stderr)
    assert named and fnmatch.fnmatchcase(named[1], pattern(layout.CLEAN_STATS, color="green", ym="2023-02")), \
        missing.stderr[-3000:]
    assert "no-such-bucket" not in {b["Name"] for b in pipeline.s3.client().list_buckets()["Buckets"]}


def test_store_down_fails_fast_naming_the_endpoint_and_a_rerun_completes(first_run, pipeline, s3):
    before = pipeline.objects()
    s3.stop()
    try:
        started = time.monotonic()
        down = pipeline.run("CleanMonth", "--year", "2023", "--month", "1")
        seconds = time.monotonic() - started
    finally:
        s3.start()
    assert down.returncode == 35, down.stderr[-3000:]  # [retcode] scheduling_error: complete() could not check
    assert f"S3 endpoint {s3.endpoint} is not reachable for s3://" in down.stderr
    assert "start the object store or fix [s3] endpoint_url" in down.stderr
    assert seconds < 30
    assert pipeline.objects() == before  # nothing half-written
    assert not list(pipeline.workdir.glob("data*"))

    resumed = pipeline.run("CleanMonth", "--year", "2023", "--month", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ran_tasks(resumed.stderr) == {"DownloadMonth 2023-01", "CleanMonth 2023-01"}
    assert match(sorted(set(pipeline.objects()) - set(before)), [
        pattern(template, color="green", ym="2023-01")
        for template in (layout.RAW, layout.RAW_META, layout.CLEAN, layout.CLEAN_STATS)])


def test_keys_in_the_query_of_an_s3_source_url_are_recorded_nowhere(pipeline):
    """An s3:// source URL with keys in its query: S3 reads the query as part of the key, so the month is not found;
    the run fails naming the URL with *** in place of each key, and no key is in any output, object or file."""
    planted = {name: f"{name}-{secrets.token_hex(8)}" for name in ("credential", "signature")}
    source = (f"{pipeline.source}/green_tripdata_{{year}}-{{month:02d}}.parquet?X-Amz-Credential="
              f"{planted['credential']}&X-Amz-Signature={planted['signature']}")
    config = pipeline.variant("s3-query", {"source": "${TAXI_TEST_SOURCE}", "store": "s3://taxi/redaction"})
    failed = pipeline.run("CleanMonth", *MONTH, env={"TAXI_TEST_SOURCE": source}, config=config)
    assert failed.returncode == 30, failed.stderr[-3000:]
    shown = f"{pipeline.source}/green_tripdata_2021-01.parquet?X-Amz-Credential=***&X-Amz-Signature=***"
    assert (f"ERROR: taxi.tasks: DownloadMonth(color=green, year=2021, month=1) failed: MonthNotPublished: green "
            f"2021-01: {shown} does not exist: the month is not in the S3 mirror; check [taxi] source") in failed.stderr
    client = pipeline.s3.client()
    produced = {key: client.get_object(Bucket="taxi", Key=key)["Body"].read() for key in pipeline.s3.keys("taxi")}
    produced.update({str(path): path.read_bytes() for path in pipeline.workdir.rglob("*") if path.is_file()})
    produced["output"] = (failed.stdout + failed.stderr).encode()
    assert [f"{name}: {what}" for name, content in produced.items() for what, secret in planted.items()
            if secret.encode() in content] == []


def test_kill_9_while_a_target_is_written_leaves_no_object_and_the_rerun_completes(s3, tmp_path, sampled_tlc):
    """CleanMonth into an S3 store, killed with half of the cleaned month written (the write stopped half way,
    tests/support/paused_writes.py): those bytes are in the run's local temporary file, no object is at the month's
    key, and the rerun stores the whole month."""
    s3.create_bucket("kills")
    store = "s3://kills/store"
    sections = profile("s3")
    sections["s3"]["endpoint_url"] = s3.endpoint
    config = write_config(tmp_path / "kill.cfg", {**sections, "taxi": {"source": str(sampled_tlc), "store": store},
                                                  "core": own_lock(tmp_path)})
    cleaned = pattern(layout.CLEAN, color="green", ym="2021-01")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = LuigiProcess(tmp_path, config, "CleanMonth", *MONTH, name="kill-in-clean", env={**s3.env, "TMPDIR": str(tmp)},
                       pause_write=f"{store}/{cleaned}")

    run.wait_for_line(rf"^{PAUSED} {re.escape(store)}/")
    run.kill()
    [half] = tmp.rglob("luigi-s3-tmp-*")  # the downloaded month's went with its upload
    assert half.stat().st_size > 0
    month = {"color": "green", "ym": "2021-01"}
    assert match([key.removeprefix("store/") for key in s3.keys("kills")],
                 [pattern(layout.RAW, **month), pattern(layout.RAW_META, **month)])
    rerun = LuigiProcess(tmp_path, config, "CleanMonth", *MONTH, name="rerun", env={**s3.env, "TMPDIR": str(tmp)})
    assert rerun.finish() == 0, rerun.log[-3000:]
    [key] = fnmatch.filter(s3.keys("kills"), f"store/{cleaned}")
    stored = pd.read_parquet(io.BytesIO(s3.client().get_object(Bucket="kills", Key=key)["Body"].read()))
    expected, _ = clean_trips(read_trips(sampled_tlc / "green_tripdata_2021-01.parquet", "green"), "green")
    pd.testing.assert_frame_equal(stored, expected.reset_index(drop=True))


def test_secret_key_appears_in_no_log_object_or_mlflow_record(first_run, pipeline, s3, mlflow_s3):
    secret = s3.secret_key
    assert len(pipeline.outputs) >= 8 and not [out for out in pipeline.outputs if secret in out]
    assert secret not in mlflow_s3.log.read_text()
    client = s3.client()
    for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
        for key in s3.keys(bucket):
            assert secret.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read(), key
    for path in pipeline.workdir.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    with tracking(pipeline.mlflow_url) as tracker:
        runs = tracker.search_runs([e.experiment_id for e in tracker.search_experiments()])
        assert len(runs) >= 4  # tuning parent, its trials, the final training run
        for run in runs:
            assert not [v for v in (*run.data.params.values(), *run.data.tags.values()) if secret in v]
        for version in tracker.search_model_versions(f"name='{MODEL}'"):
            assert not [v for v in version.tags.values() if secret in v]
