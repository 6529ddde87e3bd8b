"""Faults an unattended monthly run meets, made real: a flaky source, SIGKILL in every task, the MLflow server or
luigid going away, a full or read-only store. Each ends in a clear state, leaves no half-written target, and a
rerun completes. Secrets in the environment must appear in nothing the runs produced."""

from __future__ import annotations

import ast
import fnmatch
import functools
import glob
import json
import os
import pickle
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import xgboost as xgb
from mlflow.tracking import MlflowClient

from taxi import data, features, layout, tracking
from taxi.registry import model_name
from tests.support.flaky_http import DROP, FORBIDDEN, GZIP, OK, SHORT, SLOW, STALL, UNAVAILABLE, FlakyMirror
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import Service, free_port, luigid_service, mlflow_service
from tests.support.store import one_file, pattern, run_file

MONTH = ("--year", "2021", "--month", "1")
JANUARY = (2021, 1)
MODEL = model_name("green")
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIATAXIFAULTSUITE01", "AWS_SECRET_ACCESS_KEY": "taxi-fault-suite-aws-secret-6f1c0d",
           "TAXI_SMTP_PASSWORD": "taxi-fault-suite-smtp-password-93ab"}
PNG_END = b"IEND\xaeB`\x82"


def luigi_ran(log_text: str) -> list[str]:
    """The tasks luigi started, in order, as "BuildFeatures" or, for a task of one month, "CleanMonth 2021-02"."""
    return [family + (f" {year}-{int(month):02d}" if family in ("DownloadMonth", "CleanMonth") else "")
            for family, year, month in re.findall(r" running +(\w+)\(color=\w+, year=(\d+), month=(\d+)", log_text)]


def store_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# 1, 2. A flaky source: retried with backoff until the stored file is the source's bytes; a missing month is not.


@pytest.fixture(scope="module")
def flaky_mirror(tlc_dir) -> Iterator[FlakyMirror]:
    with FlakyMirror(tlc_dir, stall_seconds=3) as mirror:
        yield mirror


def download(workdir: Path, mirror: FlakyMirror, script: list[str], year: int,
             month: int) -> subprocess.CompletedProcess:
    """`luigi DownloadMonth` from the mirror with a 1 s read timeout, 0.1 s first backoff and 3 retries."""
    mirror.script, mirror.requests[:], mirror.request_times[:] = list(script), [], []
    config = write_config(workdir / "download.cfg", {"taxi": {
        "source": mirror.url, "store": str(workdir / "store"), "download_timeout": "1", "retry_backoff": "0.1",
        "download_retries": "3"}, "core": private_lock(workdir)})
    return run_luigi(workdir, config, "DownloadMonth", "--year", str(year), "--month", str(month), timeout=120)


@pytest.mark.parametrize("script", [
    pytest.param([UNAVAILABLE, UNAVAILABLE], id="503-twice"),
    pytest.param([DROP], id="connection-dropped-mid-body"),
    pytest.param([SHORT], id="body-shorter-than-content-length"),
    pytest.param([STALL], id="stall-longer-than-read-timeout"),
    pytest.param([UNAVAILABLE, DROP, STALL], id="three-faults-in-a-row"),
])
def test_flaky_source_is_retried_with_backoff_until_the_file_is_byte_identical(tmp_path, flaky_mirror, tlc_dir,
                                                                              script):
    """Each transient fault costs one retry, each retry waits twice as long, and the stored file is the source's."""
    run = download(tmp_path, flaky_mirror, script, 2021, 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [b for _, b in flaky_mirror.requests] == [*script, OK]
    delays = [0.1 * 2 ** (i - 1) for i in range(1, len(script) + 1)]
    assert re.findall(r"retry \d/3 in [\d.]+s", run.stderr) == [f"retry {i}/3 in {delay:.1f}s"
                                                                for i, delay in enumerate(delays, 1)]
    # and the client really waited: each retry came at least its delay after the failed attempt began (a stall
    # adds the 1 s read timeout), and not much later
    gaps = np.diff(flaky_mirror.request_times)
    for gap, delay, fault in zip(gaps, delays, script):
        assert delay <= gap <= delay + (1.0 if fault == STALL else 0) + 1.5, (list(gaps), delays, script)
    stored = tmp_path / "store" / layout.raw("green", 2021, 2)["data"]
    source = tlc_dir / "green_tripdata_2021-02.parquet"
    assert stored.read_bytes() == source.read_bytes()
    assert json.loads(stored.with_suffix(".parquet.json").read_text())["sha256"] == data.sha256(str(source))
    assert [p.name for p in store_files(tmp_path / "store")] == [stored.name, stored.name + ".json"]


def test_source_failing_every_attempt_gives_up_and_writes_nothing(tmp_path, flaky_mirror):
    run = download(tmp_path, flaky_mirror, [UNAVAILABLE] * 4, 2021, 2)
    assert run.returncode == 30  # [retcode] task_failed
    assert f"HTTP 503 from {flaky_mirror.url}/green_tripdata_2021-02.parquet (gave up after 4 attempts)" in run.stderr
    assert len(flaky_mirror.requests) == 4
    assert store_files(tmp_path / "store") == []


def test_gzipping_server_still_yields_the_files_own_bytes(tmp_path, flaky_mirror, tlc_dir):
    """A web server that gzips every type must not make Content-Length disagree with what is written."""
    run = download(tmp_path, flaky_mirror, [GZIP], 2021, 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(flaky_mirror.requests) == 1 and "retry" not in run.stderr
    stored = tmp_path / "store" / layout.raw("green", 2021, 2)["data"]
    assert stored.read_bytes() == (tlc_dir / "green_tripdata_2021-02.parquet").read_bytes()


@pytest.mark.parametrize("script,status", [([], 404), ([FORBIDDEN], 403)], ids=["404", "403"])
def test_unpublished_month_fails_at_once_naming_month_and_url_first(tmp_path, flaky_mirror, script, status):
    """404 (or the 403 S3 gives for a missing key): one request, no retry; the cause first, then the traceback."""
    year, month = (2020, 5) if status == 404 else (2021, 2)
    run = download(tmp_path, flaky_mirror, script, year, month)
    assert run.returncode == 30
    url = f"{flaky_mirror.url}/green_tripdata_{year}-{month:02d}.parquet"
    cause = (f"MonthNotPublished: green {year}-{month:02d}: HTTP {status} for {url}: the month is not published at "
             f"the source" + (" (or not in the mirror)" if status == 404 else ", or the source denies access"))
    lines = [line for line in run.stderr.splitlines() if url in line]
    assert lines == [f"ERROR: taxi.tasks: DownloadMonth(color=green, year={year}, month={month}) failed: {cause}",
                     f"taxi.source.{cause}"]
    assert len(flaky_mirror.requests) == 1 and "retry" not in run.stderr.replace("retry_backoff", "")
    assert store_files(tmp_path / "store") == []


# ---------------------------------------------------------------------------------------------------------------
# 3, 4. One pipeline, SIGKILLed in each task in turn (while it writes a target, or while its MLflow runs are open),
# with the MLflow server stopped before RegisterModel once.


@dataclass
class Step:
    """What one run of the sequence left behind."""

    log: str
    returncode: int
    ran: list[str]  # tasks luigi started (see luigi_ran)
    complete: set[str]  # tasks whose every output exists
    invalid: list[str]  # files at target paths whose content is wrong
    versions: int | None  # registered versions of the model (None: server down)
    temporary: dict[str, bytes]  # the files in the runs' TMPDIR afterwards, relative to it
    written: list[str]  # files that appeared, not empty, beside the target being written when the kill came
    stored: list[str]  # every file in the store afterwards, relative to it


class Pipeline:
    """A store, a real MLflow server and a slow-able mirror, run through kills and restarts step by step."""

    def __init__(self, workdir: Path, tlc_dir: Path, mirror: FlakyMirror, mlflow: Service):
        self.workdir, self.tlc_dir, self.mirror, self.mlflow = workdir, tlc_dir, mirror, mlflow
        self.store = workdir / "store"
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.steps: dict[str, Step] = {}
        self.config = write_config(workdir / "faults.cfg", {
            "taxi": {"source": mirror.url, "store": str(self.store), "retry_backoff": "0.1"},
            "mlflow": {"tracking_uri": mlflow.url},
            "TuneHyperparams": {**SMALL_TUNING, "max_evals": "4"},  # trials left to kill after the first
            # a failing task mails its traceback: through an SMTP password taken from the environment
            "email": {"receiver": "ops@example.invalid", "method": "smtp"},
            "smtp": {"host": "127.0.0.1", "port": str(free_port()), "username": "taxi",
                     "password": "${TAXI_SMTP_PASSWORD}"},
            "core": private_lock(workdir),
        })

    def start(self, name: str, task: str = "RegisterModel", pause_write: str | None = None) -> LuigiProcess:
        return LuigiProcess(self.workdir, self.config, task, *MONTH, name=name,
                            env={**SECRETS, "TMPDIR": str(self.tmp)}, pause_write=pause_write)

    def kill_while_writing(self, step: str, target: str) -> None:
        """Run the pipeline with the write of `target` (a pattern of the store's layout) stopped half way, SIGKILL it
        once bytes of that write are on disk (in a temporary file, or at the target path itself), and record."""
        before = set(self.store.glob(f"{target}*"))

        def written() -> list[str]:
            return sorted(str(path.relative_to(self.store)) for path in set(self.store.glob(f"{target}*")) - before
                          if path.stat().st_size > 0)

        run = self.start(f"kill-in-{step}", pause_write=str(self.store / target))
        try:
            run.wait_until(lambda: bool(written()), f"bytes of {target} written")
            run.kill()
        except AssertionError:  # the run ended first (on a broken target?): recorded, for the tests to report
            pass
        self.record(step, run, written())

    def record(self, name: str, run: LuigiProcess, written: list[str] | None = None) -> None:
        text = run.log
        self.steps[name] = Step(text, run.proc.returncode, luigi_ran(text), self.complete_tasks(),
                                self.invalid_targets(), self.versions(), self.temporary_files(), written or [],
                                [str(path.relative_to(self.store)) for path in store_files(self.store)])

    def temporary_files(self) -> dict[str, bytes]:
        """Every file in the runs' TMPDIR, relative to it."""
        return {str(p.relative_to(self.tmp)): p.read_bytes() for p in sorted(self.tmp.rglob("*")) if p.is_file()}

    def run_statuses(self) -> dict[str, list[str]]:
        """The status of every MLflow run, by the stage tag of the run (or of its parent, for trials)."""
        client = self.client()
        runs = client.search_runs([client.get_experiment_by_name("taxi-duration").experiment_id], max_results=1000)
        stage = {r.info.run_id: r.data.tags.get("taxi.stage") for r in runs}
        statuses: dict[str, list[str]] = {}
        for r in runs:
            parent = r.data.tags.get("mlflow.parentRunId")
            key = f"{stage[parent]} trial" if parent else stage[r.info.run_id]
            statuses.setdefault(key, []).append(r.info.status)
        return {key: sorted(values) for key, values in statuses.items()}

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.mlflow.url)

    def versions(self) -> int | None:
        if self.mlflow.proc.poll() is not None:
            return None
        return len(self.client().search_model_versions(f"name='{MODEL}'"))

    def trial_running(self) -> bool:
        """Whether a tuning trial (a nested run) is open in MLflow."""
        experiment = self.client().get_experiment_by_name("taxi-duration")
        return experiment is not None and bool(self.client().search_runs(
            [experiment.experiment_id], "attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` != ''"))

    def outputs(self) -> dict[str, list[str]]:
        """Every task's outputs as patterns of the store's layout (taxi.layout; any key: one setting per task here)."""
        month = {"color": "green", "ym": "2021-01"}
        by_month = {"DownloadMonth": [layout.RAW, layout.RAW_META], "CleanMonth": [layout.CLEAN, layout.CLEAN_STATS]}
        outputs = {f"{task} {ym}": [pattern(t, color="green", ym=ym) for t in templates]
                   for ym in ("2021-01", "2021-02") for task, templates in by_month.items()}
        outputs["BuildFeatures"] = [pattern(layout.FEATURES, **month, name=n) for n in layout.FEATURE_FILES]
        outputs["TuneHyperparams"] = [pattern(layout.TUNING, **month), layout.REGISTRY_RECORD]  # the first in MLflow
        outputs["TrainModel"] = [pattern(layout.RUN, **month, name=n) for n in ("booster.ubj", "train.json")]
        outputs["RegisterModel"] = [pattern(layout.RUN, **month, name=n)
                                    for n in (layout.REGISTRATION, *layout.REPORT_FILES)]
        return outputs

    def complete_tasks(self) -> set[str]:
        return {task for task, patterns in self.outputs().items() if all(any(self.store.glob(p)) for p in patterns)}

    def invalid_targets(self) -> list[str]:
        """Files in the store that are not a whole, correct target (luigi's temporary files aside)."""
        patterns = [p for patterns in self.outputs().values() for p in patterns]
        invalid = []
        for path in store_files(self.store):
            if "-luigi-tmp-" in path.name:
                continue
            try:
                relative = str(path.relative_to(self.store))
                assert any(fnmatch.fnmatchcase(relative, p) for p in patterns), "not a target of this pipeline"
                self.check(path)
            except Exception as exc:  # any failure to read or verify is a wrong target
                invalid.append(f"{path.relative_to(self.store)}: {type(exc).__name__} {exc}")
        return invalid

    def check(self, path: Path) -> None:
        """Raise unless `path` holds what its task writes."""
        name = path.name
        if path.parent.name == "green" and path.parent.parent.name == "raw":
            source = self.tlc_dir / name.removesuffix(".json")
            if name.endswith(".json"):
                assert json.loads(path.read_text())["sha256"] == data.sha256(str(source))
            else:
                assert path.read_bytes() == source.read_bytes(), "differs from the source"
        elif name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(path), self.cleaned(name.removesuffix(".parquet")))
        elif name.endswith(".npz"):
            X, y = features.load_matrix(str(path))
            assert X.shape[0] == len(y) > 0
        elif name.endswith(".pkl"):
            assert pickle.loads(path.read_bytes()).feature_names_
        elif name.endswith(".ubj"):
            xgb.Booster().load_model(bytearray(path.read_bytes()))
        elif name.endswith(".png"):
            content = path.read_bytes()
            assert content.startswith(b"\x89PNG") and content.endswith(PNG_END), "not a whole PNG"
        elif name.endswith(".md"):  # whole: from its title to the last plot, its last line
            text = path.read_text()
            assert text.startswith(f"# {MODEL} v") and text.endswith(f"({layout.REPORT_PLOTS[-1]})\n"), "cut short"
        elif name in ("2021-01.json", "2021-02.json"):
            assert json.loads(path.read_text())["rows_clean"] == len(self.cleaned(name.removesuffix(".json")))
        else:
            content = json.loads(path.read_text())
            key = {"best_params.json": "params", "train.json": "run_id", "registration.json": "version",
                   layout.REGISTRY_RECORD: "experiment_id"}[name]
            assert key in content

    @functools.cache
    def cleaned(self, ym: str) -> pd.DataFrame:
        """The month cleaned here, from the source file, as CleanMonth should have stored it."""
        trips, _ = data.clean_trips(data.read_trips(self.tlc_dir / data.tlc_filename("green", *map(int, ym.split("-"))),
                                                    "green"), "green")
        return trips.reset_index(drop=True)


# the target each step's kill interrupts the write of
WRITTEN_IN = {"features": pattern(layout.FEATURES, color="green", ym="2021-01", name="train.npz"),
              "tune": pattern(layout.TUNING, color="green", ym="2021-01"),
              "train": pattern(layout.RUN, color="green", ym="2021-01", name="train.json"),
              "register": pattern(layout.RUN, color="green", ym="2021-01", name=layout.REGISTRATION)}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, sampled_tlc) -> Iterator[Pipeline]:
    """On 8000 real trips of each month (`sampled_tlc`), which tune and train in seconds, the whole sequence, each step
    recorded: kill mid-body in download; kill while BuildFeatures writes train.npz; kill while a tuning trial runs;
    kill while TuneHyperparams writes best_params.json, while TrainModel writes train.json; finish training; stop
    MLflow and try to register; restart MLflow; kill while RegisterModel writes registration.json (the version is
    registered by then); rerun to the end. Each write is stopped half way (tests/support/paused_writes.py) so that
    the kill lands inside it; test_kill_9_while_a_large_month_is_cleaned_and_written kills a real, slow write."""
    workdir = tmp_path_factory.mktemp("faults")
    mlflow = mlflow_service(workdir / "mlflow").start()
    try:
        with FlakyMirror(sampled_tlc, slow_seconds=4) as mirror:
            pipe = Pipeline(workdir, sampled_tlc, mirror, mlflow)
            mirror.script = [SLOW]
            run = pipe.start("kill-in-download")
            run.wait_until(mirror.half_sent.is_set, "half of the first month sent")
            run.kill()
            pipe.record("download", run)
            pipe.kill_while_writing("features", WRITTEN_IN["features"])
            run = pipe.start("kill-in-trial")
            run.wait_until(pipe.trial_running, "a tuning trial running")
            run.kill()
            pipe.record("trial", run)
            pipe.kill_while_writing("tune", WRITTEN_IN["tune"])
            pipe.kill_while_writing("train", WRITTEN_IN["train"])
            run = pipe.start("finish-training", "TrainModel")
            run.finish()
            pipe.record("finish-training", run)
            mlflow.stop()
            run = pipe.start("register-without-mlflow")
            run.finish()
            pipe.record("mlflow-down", run)
            mlflow.start()
            pipe.kill_while_writing("register", WRITTEN_IN["register"])
            run = pipe.start("rerun")
            run.finish()
            pipe.record("rerun", run)
            yield pipe
    finally:
        mlflow.stop()


KILLED_IN = {"download": "DownloadMonth 2021-02", "features": "BuildFeatures", "trial": "TuneHyperparams",
             "tune": "TuneHyperparams", "train": "TrainModel", "register": "RegisterModel"}


@pytest.mark.parametrize("step", list(KILLED_IN))
def test_kill_9_in_a_task_leaves_no_target_that_looks_complete_with_wrong_content(pipeline, step):
    """Every file at a target path is whole and right; the killed task does not look complete."""
    recorded = pipeline.steps[step]
    assert recorded.returncode == -9, recorded.log[-3000:]
    assert recorded.ran[-1] == KILLED_IN[step]
    assert recorded.invalid == []
    assert KILLED_IN[step] not in recorded.complete


@pytest.mark.parametrize("step", list(WRITTEN_IN))
def test_kill_9_while_a_task_writes_a_target_leaves_its_bytes_only_in_a_temporary_file(pipeline, step):
    """The kill came with half of the target written: those bytes are in a temporary file beside the target, and
    nothing is at the target path itself."""
    recorded = pipeline.steps[step]
    assert len(recorded.written) == 1, recorded.written
    assert fnmatch.fnmatchcase(recorded.written[0], f"{WRITTEN_IN[step]}-luigi-tmp-*"), recorded.written
    assert not [path for path in recorded.stored if fnmatch.fnmatchcase(path, WRITTEN_IN[step])]


def test_kill_9_while_a_large_month_is_cleaned_and_written(tmp_path, tlc_dir):
    """2.3 M real rows (green 2021-01 thirty times) take a second to write as parquet: the kill lands once the
    cleaned file's temporary file appears. No cleaned file at the target path, the downloaded month stays whole,
    and the rerun cleans all rows."""
    january = pq.read_table(tlc_dir / "green_tripdata_2021-01.parquet")
    (tmp_path / "mirror").mkdir()
    pq.write_table(pa.concat_tables([january] * 30), tmp_path / "mirror" / "green_tripdata_2021-01.parquet")
    config = write_config(tmp_path / "large.cfg", {"taxi": {"source": str(tmp_path / "mirror"),
                                                            "store": str(tmp_path / "store")},
                                                   "core": private_lock(tmp_path)})
    cleaned = tmp_path / "store" / pattern(layout.CLEAN, color="green", ym="2021-01")
    run = LuigiProcess(tmp_path, config, "CleanMonth", *MONTH, name="kill-in-clean")
    run.wait_until(lambda: bool(glob.glob(f"{cleaned}*")), "the cleaned month being written")
    run.kill()
    assert luigi_ran(run.log)[-1] == "CleanMonth 2021-01" and "done      CleanMonth" not in run.log
    written = [Path(path).relative_to(tmp_path / "store") for path in glob.glob(f"{cleaned}*")]
    assert len(written) == 1 and fnmatch.fnmatchcase(str(written[0]), f"{pattern(layout.CLEAN)}-luigi-tmp-*"), written
    raw = tmp_path / "store" / layout.raw("green", *JANUARY)["data"]
    assert raw.read_bytes() == (tmp_path / "mirror" / raw.name).read_bytes()
    assert [p.name for p in store_files(tmp_path / "store/clean") if "-luigi-tmp-" not in p.name] == []
    rerun = LuigiProcess(tmp_path, config, "CleanMonth", *MONTH, name="rerun")
    assert rerun.finish() == 0, rerun.log[-3000:]
    assert luigi_ran(rerun.log) == ["CleanMonth 2021-01"]
    assert pq.read_metadata(one_file(tmp_path / "store", layout.CLEAN, color="green", ym="2021-01")).num_rows == \
        30 * 73_908


def test_kill_9_mid_download_keeps_the_partial_file_out_of_the_store_and_the_next_run_fetches_it_whole(pipeline):
    """Half the body sent when the kill came: what had arrived is in the killed run's temporary folder (a prefix of
    the month, short of it), nothing of the month is in the store, and the next run downloaded it again whole."""
    source = (pipeline.tlc_dir / "green_tripdata_2021-02.parquet").read_bytes()
    download = pipeline.steps["download"]
    [partial] = [content for path, content in download.temporary.items()
                 if re.fullmatch(r"taxi-run-.+-\d+/taxi-download-\w+/green_tripdata_2021-02\.parquet", path)]
    assert len(partial) < len(source) and source.startswith(partial)
    assert [path for path in download.stored if "2021-02" in path] == []
    month = "/green_tripdata_2021-02.parquet"
    assert [request for request in pipeline.mirror.requests if request[0] == month] == [(month, SLOW), (month, OK)]
    stored = pipeline.store / layout.raw("green", 2021, 2)["data"]
    assert str(stored.relative_to(pipeline.store)) in pipeline.steps["features"].stored
    assert stored.read_bytes() == source


def test_each_rerun_starts_at_the_killed_task_and_repeats_no_finished_one(pipeline):
    order = list(pipeline.steps)
    assert order == ["download", "features", "trial", "tune", "train", "finish-training", "mlflow-down", "register",
                     "rerun"]
    for before, after in zip(order, order[1:]):
        killed, next_run = pipeline.steps[before], pipeline.steps[after]
        if killed.returncode == -9:
            assert next_run.ran[0] == killed.ran[-1], (before, after)
        assert set(next_run.ran).isdisjoint(killed.complete), (before, after)


def test_mlflow_down_before_register_fails_naming_the_tracking_uri(pipeline):
    assert pipeline.steps["finish-training"].returncode == 0  # the server was stopped once TrainModel was done
    recorded = pipeline.steps["mlflow-down"]
    assert recorded.returncode == 30
    assert recorded.ran == ["RegisterModel"]
    assert f"MLflow tracking server {pipeline.mlflow.url} is not reachable" in recorded.log
    assert "RegisterModel" not in recorded.complete and recorded.invalid == []


def test_register_after_mlflow_is_back_reruns_neither_tuning_nor_training(pipeline):
    for step in ("register", "rerun"):
        assert pipeline.steps[step].ran == ["RegisterModel"]
    assert f"{MODEL} version 1: champion: the first model" in pipeline.steps["register"].log


def test_kill_9_in_register_then_rerun_registers_exactly_one_version(pipeline):
    """The kill came after the version was registered; the rerun finds it by run id instead of registering again."""
    assert pipeline.steps["register"].versions == 1
    rerun = pipeline.steps["rerun"]
    assert rerun.returncode == 0, rerun.log[-3000:]
    assert rerun.versions == 1
    registration = json.loads(run_file(pipeline.store, layout.REGISTRATION).read_text())
    trained = json.loads(run_file(pipeline.store, "train.json").read_text())
    assert (registration["version"], registration["run_id"], registration["decision"]) == (1, trained["run_id"],
                                                                                          "champion")
    client = pipeline.client()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert (champion.version, champion.run_id) == ("1", trained["run_id"])
    assert client.get_run(trained["run_id"]).info.status == "FINISHED"


def test_rerun_after_every_fault_completes_the_pipeline(pipeline):
    rerun = pipeline.steps["rerun"]
    assert rerun.complete == set(pipeline.outputs()) and rerun.invalid == []
    assert "This progress looks :)" in rerun.log


def test_the_next_run_cleans_what_killed_runs_left(pipeline):
    """Killed runs leave their temporary folders (the download's partial file in the first) and MLflow runs still
    RUNNING (killed mid-trial) or FINISHED with no target (killed writing best_params.json, train.json); the next run
    removes the folders and marks those runs KILLED, MLflow's own status. In the store only luigi's `*-luigi-tmp-*`
    files beside targets may remain (`invalid == []` allows nothing else)."""
    download = pipeline.steps["download"]
    assert any(re.fullmatch(r"taxi-run-.+-\d+/taxi-download-\w+/green_tripdata_2021-02\.parquet", path)
               for path in download.temporary), list(download.temporary)
    assert pipeline.steps["rerun"].temporary == {}
    statuses = pipeline.run_statuses()
    assert statuses["tuning"] == ["FINISHED", "KILLED", "KILLED"], statuses
    assert statuses["training"] == ["FINISHED", "KILLED"], statuses
    trials = statuses["tuning trial"]
    assert trials.count("KILLED") == 1 and set(trials) == {"FINISHED", "KILLED"}, statuses  # the one open at the kill


def test_no_secret_in_logs_store_reports_or_mlflow(pipeline):
    """AWS keys and the SMTP password were in every run's environment (and the SMTP one in luigi's config)."""
    produced = [p for p in pipeline.workdir.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in produced) and any(p.name == "report.md" for p in produced)
    assert any("MLmodel" == p.name for p in produced)  # the server's artifact store is under the workdir
    assert "Not able to connect to smtp server" in pipeline.steps["mlflow-down"].log  # the mail was attempted
    leaks = [f"{p.relative_to(pipeline.workdir)}: {name}" for p in produced for name, secret in SECRETS.items()
             if secret.encode() in p.read_bytes()]
    assert leaks == []


# ---------------------------------------------------------------------------------------------------------------
# 5. luigid restarted while a run is in flight.


def done_tasks(luigid: Service) -> set[tuple[str, str, str]]:
    """(family, year, month) of the tasks the scheduler holds as DONE."""
    reply = requests.get(f"{luigid.url}/api/task_list", params={"data": json.dumps({"status": "DONE"})}, timeout=10)
    return {(t["name"], t["params"]["year"], t["params"]["month"]) for t in reply.json()["response"].values()}


def test_luigid_restart_mid_run_keeps_done_tasks_and_the_run_completes(tmp_path, tlc_dir):
    luigid = luigid_service(tmp_path / "luigid").start()
    try:
        with FlakyMirror(tlc_dir, slow_seconds=8) as mirror:
            mirror.script = [OK, SLOW]  # the second month downloads slowly: luigid restarts meanwhile
            config = write_config(tmp_path / "central.cfg", {
                "taxi": {"source": mirror.url, "store": str(tmp_path / "store")},
                "core": {"local_scheduler": "false", "default_scheduler_url": luigid.url,
                         "rpc-retry-attempts": "60", "rpc-retry-wait": "1", **private_lock(tmp_path)},
            })
            run = LuigiProcess(tmp_path, config, "BuildFeatures", *MONTH, name="through-restart")
            run.wait_until(mirror.half_sent.is_set, "half of the second month sent")
            before = done_tasks(luigid)
            luigid.stop()
            state_saved = (tmp_path / "luigid" / "state.pickle").exists()
            luigid.start()
            after_restart = done_tasks(luigid)
            returncode = run.finish()
            rerun = run_luigi(tmp_path, config, "BuildFeatures", *MONTH)
    finally:
        luigid.stop()
    assert state_saved
    assert before >= {("DownloadMonth", "2021", "2"), ("CleanMonth", "2021", "2")}
    assert before <= after_restart  # what was done before the restart is still done
    assert returncode == 0, run.log[-3000:]
    assert luigi_ran(run.log) == ["DownloadMonth 2021-02", "CleanMonth 2021-02", "DownloadMonth 2021-01",
                                  "CleanMonth 2021-01", "BuildFeatures"]
    assert rerun.returncode == 0 and "ran successfully" not in rerun.stderr
    assert one_file(tmp_path / "store", layout.FEATURES, color="green", ym="2021-01", name="train.npz").exists()


# ---------------------------------------------------------------------------------------------------------------
# 6. A full or read-only store (tmpfs mounts: root is not stopped by file modes).


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[..., Path]]:
    """mount(name, *options): a fresh tmpfs under tmp_path, unmounted after the test."""
    mounted: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("options,errno,reason,fix", [
    (("size=1m",), 28, "No space left on device", "size=4m"),
    (("ro", "size=4m"), 30, "Read-only file system", "rw"),
], ids=["disk-full", "read-only"])
def test_full_or_read_only_store_fails_naming_the_target_and_leaves_nothing(tmp_path, tmpfs, tlc_dir, options,
                                                                           errno, reason, fix):
    """A 1.3 MB month into a 1 MB store, or into a read-only one: one clear error, no file; fixed, a rerun works."""
    store = tmpfs("store", *options)
    config = write_config(tmp_path / "store.cfg", {"taxi": {"source": str(tlc_dir), "store": str(store)},
                                                   "core": private_lock(tmp_path)})
    failed = run_luigi(tmp_path, config, "DownloadMonth", *MONTH)
    assert failed.returncode == 30
    target = store / layout.raw("green", *JANUARY)["data"]
    assert f"OSError: [Errno {errno}] cannot write {target} into [taxi] store {store}: {reason}" in failed.stderr
    assert store_files(store) == []
    subprocess.run(["mount", "-o", f"remount,{fix}", str(store)], check=True)
    rerun = run_luigi(tmp_path, config, "DownloadMonth", *MONTH)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert target.read_bytes() == (tlc_dir / "green_tripdata_2021-01.parquet").read_bytes()


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_full_or_read_only_store_fails_every_task_naming_its_target(tmp_path, tmpfs, tlc_dir, fault):
    """Not only the download: with the month downloaded, the store fills up (a file takes every free byte) or turns
    read-only, and CleanMonth fails with the same clear error; fixed, its rerun completes."""
    store = tmpfs("store", "size=8m")
    config = write_config(tmp_path / "store.cfg", {"taxi": {"source": str(tlc_dir), "store": str(store)},
                                                   "core": private_lock(tmp_path)})
    assert run_luigi(tmp_path, config, "DownloadMonth", *MONTH).returncode == 0
    downloaded = store_files(store)
    filler = store / "filler"
    if fault == "disk-full":
        with open(filler, "wb") as f:
            free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
            os.posix_fallocate(f.fileno(), 0, free)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
    failed = run_luigi(tmp_path, config, "CleanMonth", *MONTH)
    assert failed.returncode == 30
    errno, reason = (28, "No space left on device") if fault == "disk-full" else (30, "Read-only file system")
    [target] = set(re.findall(rf"OSError: \[Errno {errno}\] cannot write (\S+) into \[taxi\] store {store}: "
                              rf"{reason}", failed.stderr))
    assert fnmatch.fnmatchcase(target, str(store / pattern(layout.CLEAN, color="green", ym="2021-01")))
    assert "FileNotFoundError" not in failed.stderr
    assert [p for p in store_files(store) if p != filler] == downloaded
    if fault == "disk-full":
        filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True)
    rerun = run_luigi(tmp_path, config, "CleanMonth", *MONTH)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert pq.read_metadata(target).num_rows == 73_908


# ---------------------------------------------------------------------------------------------------------------
# 7. SIGKILL while the embedded sqlite tracking database is created (MLflow's migrations take seconds).


def test_kill_9_while_the_tracking_database_is_created_leaves_none_half_made(tmp_path, sampled_tlc):
    """The first run on a fresh `mlflow.db`, killed again and again at varied points of MLflow's migrations (each
    kill checked to land while the database was being made): no database at its path, and the next run completes
    on a whole one, with the killed attempts' temporary files gone."""
    database = tmp_path / "mlflow.db"
    partial = Path(f"{database}{tracking.PARTIAL_DATABASE}")
    config = write_config(tmp_path / "sqlite.cfg", {
        "taxi": {"source": str(sampled_tlc), "store": str(tmp_path / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{database}", "artifact_location": str(tmp_path / "mlartifacts")},
        "TuneHyperparams": SMALL_TUNING, "core": private_lock(tmp_path)})
    built = run_luigi(tmp_path, config, "BuildFeatures", *MONTH)  # so that each attempt soon connects to MLflow
    assert built.returncode == 0, built.stderr[-3000:]
    (tmp_path / "probe").mkdir()
    started = time.monotonic()  # a lower bound of how long a luigi process spends making the database
    tracking.create_local_database(str(tmp_path / "probe" / "mlflow.db"))
    making = time.monotonic() - started
    landed = []
    for i, share in enumerate((0.0, 0.15, 0.3, 0.45, 0.6)):
        for leftover in (partial, Path(f"{partial}-journal")):  # the attempt before's: this attempt must make its own
            leftover.unlink(missing_ok=True)
        run = LuigiProcess(tmp_path, config, "TuneHyperparams", *MONTH, name=f"kill-{i}")
        run.wait_until(lambda: partial.exists() or database.exists(), "the tracking database being created")
        time.sleep(share * making)
        run.kill()
        assert not database.exists(), f"a half-made database after a kill {share * making:.2f}s into its creation"
        landed.append(partial.exists())
    assert all(landed), landed  # every kill came while the database was being made
    assert partial.exists()  # the last attempt's, for the rerun to sweep
    rerun = LuigiProcess(tmp_path, config, "TuneHyperparams", *MONTH, name="rerun")
    assert rerun.finish() == 0, rerun.log[-3000:]
    assert luigi_ran(rerun.log) == ["TuneHyperparams"]
    assert sorted(p.name for p in tmp_path.glob("mlflow.db*")) == ["mlflow.db", "mlflow.db.lock"]
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("taxi-duration")
    [tuning] = client.search_runs([experiment.experiment_id], "tags.`taxi.stage` = 'tuning'")
    assert tuning.info.status == "FINISHED" and client.search_registered_models() == []


# ---------------------------------------------------------------------------------------------------------------
# docs/faults.md "What it survives" is this suite's table of contents.


def test_readme_table_names_every_fault_test():
    """Every test a row of the table names exists, and every test of the fault and bad-input suites has a row."""
    readme = (ROOT / "docs" / "faults.md").read_text()
    section = readme.split("# What it survives\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault")]
    named = [re.findall(r"`(test_\w+)`", row) for row in rows]
    assert all(named), "a row names no test"
    suite = {node.name for module in ("test_faults.py", "test_bad_inputs.py")
             for node in ast.parse((ROOT / "tests" / "integration" / module).read_text()).body
             if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    assert {name for names in named for name in names} == suite - {test_readme_table_names_every_fault_test.__name__}
