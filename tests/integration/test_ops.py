"""Operations against real services on 127.0.0.1: luigid as systemd/luigid.service runs it (config/luigid.cfg, task
history in sqlite), an `mlflow server`, an SMTP server, and the pipeline with the config/server.cfg profile.

Only what a test must change is overridden: folders, ports, a one-second retry delay, a tiny tuning budget.
"""

from __future__ import annotations

import configparser
import dataclasses
import email
import functools
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from aiosmtpd.controller import Controller
from mlflow.tracking import MlflowClient

from taxi import layout
from taxi.registry import model_name
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import QuietHandler, Service, free_port, mlflow_service
from tests.support.store import one_file

MODEL = model_name("green")
RETRY_COUNT = 2  # the test scheduler disables a task after two failures, retried one second apart
TRAINING_TASKS = ("TuneHyperparams", "TrainModel", "RegisterModel")


def shipped(name: str) -> dict[str, dict[str, str]]:
    """The sections of config/<name>.cfg as written (environment references left for Luigi to resolve)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "config" / f"{name}.cfg")
    return {section: dict(parser[section]) for section in parser.sections()}


def merged(base: dict, overrides: dict) -> dict[str, dict[str, str]]:
    return {s: {**base.get(s, {}), **overrides.get(s, {})} for s in dict.fromkeys([*base, *overrides])}


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def texts(self) -> list[tuple[str, str]]:
        """(subject, plain-text body) of each message."""
        return [(m["Subject"], m.get_payload()[0].get_payload(decode=True).decode()) for m in self.messages]


class FlakyHandler(QuietHandler):
    """Serves the TLC folder, but answers the first GET of each file with 503 (HEAD requests always succeed)."""

    def do_GET(self) -> None:
        with self.server.lock:
            first = self.path not in self.server.failed_once
            self.server.failed_once.add(self.path)
        if first:
            self.send_error(503, "Service Unavailable")
        else:
            super().do_GET()


def start_scheduler(state: Path) -> Service:
    """luigid as systemd/luigid.service starts it, its state and history in `state`; retries one second apart."""
    state.mkdir(parents=True)
    config = write_config(state / "luigid.cfg", merged(shipped("luigid"), {
        "scheduler": {"retry_delay": "1", "retry_count": str(RETRY_COUNT), "prune_on_get_work": "true"}}))
    port = free_port()
    return Service("luigid", [sys.executable, "-m", "taxi.luigid", "--address", "127.0.0.1", "--port", str(port),
                              "--state-path", str(state / "state.pickle"), "--logdir", str(state)],
                   port, "/api/graph", state / "luigid.out",
                   env={"LUIGI_CONFIG_PATH": str(config), "STATE_DIRECTORY": str(state)}).start()


class Ops:
    """A scheduler with its task history, the shared MLflow and SMTP servers, and the operator commands."""

    def __init__(self, workdir: Path, mlflow: Service, smtp_port: int, inbox: Inbox):
        self.workdir, self.mlflow, self.smtp_port, self.inbox = workdir, mlflow, smtp_port, inbox
        self.scheduler = start_scheduler(workdir / "luigid")

    def profile(self, name: str, source: str, **overrides: dict[str, str]) -> Path:
        """config/server.cfg pointed at the test services, a store of its own and `source`."""
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        sections = merged(shipped("server"), {
            "core": {"scheduler_url": self.scheduler.url, "lock_pid_dir": str(folder / "lock")},
            # the test scheduler retries after 1 s (config/server.cfg: 10 minutes for a 5-minute retry delay)
            "worker": {"max_keep_alive_idle_duration": "5 seconds", "wait_jitter": "0.5"},
            "taxi": {"store": str(self.workdir / "store"), "source": source, "threads": "1", "download_retries": "0"},
            "mlflow": {"tracking_uri": self.mlflow.url},
            "smtp": {"port": str(self.smtp_port)},
            "TuneHyperparams": SMALL_TUNING,
        })
        return write_config(folder / "server.cfg", merged(sections, overrides))

    def script(self, config: Path, *argv: str) -> subprocess.CompletedProcess:
        """A script of scripts/ as the service runs it (working directory: the checkout)."""
        return subprocess.run([str(ROOT / "scripts" / argv[0]), *argv[1:]], capture_output=True, text=True,
                              timeout=900, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})

    def history(self) -> list[tuple[str, dict[str, str], str, str]]:
        """(task name, parameters, event, timestamp) of every event in the scheduler's task history, oldest first."""
        with sqlite3.connect(self.workdir / "luigid" / "history.db") as db:
            params: dict[int, dict[str, str]] = {}
            for row, name, value in db.execute("SELECT task_id, name, value FROM task_parameters"):
                params.setdefault(row, {})[name] = value
            return [(name, params.get(row, {}), event, ts) for row, name, event, ts in db.execute(
                "SELECT t.id, t.name, e.event_name, e.ts FROM task_events e JOIN tasks t ON e.task_id = t.id "
                "ORDER BY e.ts, e.id")]

    def events(self, task: str, since: str = "", **params: str) -> list[str]:
        """The history events of `task` runs whose parameters include `params`, after `since`, oldest first."""
        return [event for name, values, event, ts in self.history()
                if name == task and ts > since and params.items() <= values.items()]

    def scheduler_tasks(self, status: str, search: str) -> dict[str, dict]:
        query = {"data": json.dumps({"status": status, "search": search})}
        return requests.get(f"{self.scheduler.url}/api/task_list", params=query, timeout=10).json()["response"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Service, int, Inbox]:
    """The MLflow tracking server and the SMTP server every scheduler of this module uses."""
    mlflow = mlflow_service(tmp_path_factory.mktemp("mlflow")).start()
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    yield mlflow, smtp.port, inbox
    smtp.stop()
    mlflow.stop()


@pytest.fixture(scope="module")
def ops(tmp_path_factory, shared) -> Ops:
    """The scheduler of the successful runs."""
    ops = Ops(tmp_path_factory.mktemp("ops"), *shared)
    yield ops
    ops.scheduler.stop()


@pytest.fixture
def fresh(tmp_path, shared) -> Ops:
    """A scheduler and a store of the test's own, so no other test's task states or history interfere."""
    ops = Ops(tmp_path, *shared)
    yield ops
    ops.scheduler.stop()


@pytest.fixture(scope="module")
def client(ops) -> MlflowClient:
    return MlflowClient(tracking_uri=ops.mlflow.url)


def trained_months(client: MlflowClient) -> list[str]:
    """The training month of every registered version, by version number."""
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    return [client.get_run(v.run_id).data.tags["train.month"] for v in versions]


@dataclasses.dataclass
class Backfill:
    done: subprocess.CompletedProcess
    config: Path
    months_registered: list[str]  # by the backfill, in registration order


@pytest.fixture(scope="module")
def backfill(ops, client, tlc_http) -> Backfill:
    """Every month from 2021-01 to 2023-01 with two workers; only 2021-01 and 2023-01 have both files."""
    config = ops.profile("backfill", tlc_http)
    before = len(trained_months(client))
    done = ops.script(config, "backfill", "green", "2021-01", "2023-01", "--workers", "2")
    return Backfill(done, config, trained_months(client)[before:])


def test_backfill_registers_the_two_published_months_and_reports_the_gaps(backfill):
    assert backfill.done.returncode == 20, backfill.done.stderr[-3000:]  # [retcode] missing_data
    summary = backfill.done.stderr[backfill.done.stderr.index("===== Luigi Execution Summary"):]
    assert set(re.findall(r" done +RegisterModel\(color=green, year=(\d+), month=(\d+)", backfill.done.stderr)) == {
        ("2021", "1"), ("2023", "1")}
    # 2021-03 .. 2022-12 are not in the mirror: 23 training months lack a file of their own or of the next month
    assert "* 22 were missing external dependencies:" in summary
    assert "23 RegisterMonth(month=2021-02...2022-12, color=green)" in summary
    assert "failed" not in summary
    assert sorted(backfill.months_registered) == ["2021-01", "2023-01"]


def test_backfill_workers_ran_the_two_months_in_parallel(backfill, ops):
    spans: dict[tuple, dict[str, str]] = {}
    for name, params, event, ts in ops.history():
        if name in ("CleanMonth", "BuildFeatures", "TuneHyperparams", "TrainModel") and event in ("RUNNING", "DONE"):
            spans.setdefault((name, params["year"], params["month"]), {})[event] = ts
    overlapping = [(a, b) for a in spans for b in spans
                   if a[1] != b[1] and spans[a]["RUNNING"] < spans[b]["RUNNING"] < spans[a]["DONE"]]
    assert overlapping, spans


def test_backfill_again_skips_the_months_done(backfill, ops, client):
    before = trained_months(client)
    again = ops.script(backfill.config, "backfill", "green", "2021-01", "2023-01")
    assert again.returncode == 20
    assert "ran successfully" not in again.stderr and "23 RegisterMonth(month=2021-02...2022-12" in again.stderr
    assert trained_months(client) == before


def test_tuning_progress_is_in_the_scheduler_api(backfill, ops):
    tuned = ops.scheduler_tasks("DONE", "TuneHyperparams")
    assert len(tuned) == 2
    for task in tuned.values():
        ym = f"{task['params']['year']}-{int(task['params']['month']):02d}"
        best = json.loads(one_file(ops.workdir / "store", layout.TUNING, color="green", ym=ym).read_text())
        assert task["progress_percentage"] == 100
        assert task["status_message"] == f"trial 2 of 2, best validation RMSE so far {best['val_rmse']:.4f}"


def test_task_history_has_a_row_per_task_and_its_status_changes(backfill, ops):
    for year in ("2021", "2023"):
        for task in TRAINING_TASKS:
            events = ops.events(task, year=year, month="1", color="green")
            assert events[0] == "PENDING" and events[-2:] == ["RUNNING", "DONE"], (task, year, events)
    assert set(ops.events("SourceFile", year="2022", month="12")) == {"PENDING"}  # missing: never run


def test_concurrent_invocations_run_each_task_once(fresh, client, tlc_http):
    """Two hosts (own pid-lock folders) start RegisterModel for the same month at the same moment."""
    configs = [fresh.profile(f"host{i}", tlc_http) for i in (1, 2)]
    before = len(trained_months(client))
    procs = [subprocess.Popen([str(Path(sys.executable).parent / "luigi"), "--module", "taxi.tasks", "RegisterModel",
                               "--year", "2021", "--month", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
             for config in configs]
    outputs = [p.communicate(timeout=900) for p in procs]
    runs = {name: [event for task, _, event, _ in fresh.history() if task == name].count("RUNNING")
            for name in ("DownloadMonth", "CleanMonth", "BuildFeatures", *TRAINING_TASKS)}
    assert runs == {"DownloadMonth": 2, "CleanMonth": 2, "BuildFeatures": 1, "TuneHyperparams": 1, "TrainModel": 1,
                    "RegisterModel": 1}
    assert len(trained_months(client)) == before + 1
    # The hosts share the work (one typically downloads and cleans the validation month), so each process also
    # lists tasks the other ran, which Luigi reports as not run by it: exit 25 (not_run) or 10 (already_running)
    summaries = [err[err.index("===== Luigi Execution Summary"):] for _, err in outputs]
    ran = [int(m.group(1)) if (m := re.search(r"\* (\d+) ran successfully", text)) else 0 for text in summaries]
    assert sum(ran) == 8, summaries
    # no summary category of failed or missing tasks ("no failed tasks or missing dependencies" is the :) line)
    trouble = re.compile(r"\* \d+ (failed|had failed|had missing|were missing)")
    assert all(p.returncode in (0, 10, 25) and not trouble.search(text)
               for p, text in zip(procs, summaries)), "\n".join(summaries)


def test_run_monthly_trains_the_newest_published_month(fresh, client, tlc_http):
    before = trained_months(client)
    done = fresh.script(fresh.profile("monthly", tlc_http), "run-monthly", "green", "--as-of", "2023-04-20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "newest trainable green month as of 2023-04-20: 2023-01" in done.stderr
    assert trained_months(client) == [*before, "2023-01"]


def test_run_monthly_without_a_published_month_exits_missing_data(fresh, tlc_http):
    done = fresh.script(fresh.profile("monthly-none", tlc_http), "run-monthly", "green", "--as-of", "2021-01-15")
    assert done.returncode == 20
    assert f"no green month with its following month published at {tlc_http} among the 12 newest" in done.stderr


def test_transient_failure_is_retried_by_the_scheduler_and_mailed_once(fresh, tlc_dir, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FlakyHandler, directory=tlc_dir))
    server.failed_once, server.lock = set(), threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = fresh.profile("flaky", f"http://127.0.0.1:{server.server_address[1]}")
        fresh.inbox.messages.clear()
        done = run_luigi(tmp_path, config, "CleanMonth", "--year", "2021", "--month", "2")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    assert fresh.events("DownloadMonth", year="2021", month="2")[-4:] == ["RUNNING", "FAILED", "RUNNING", "DONE"]
    [(subject, body)] = fresh.inbox.texts()
    assert subject.startswith("Luigi: DownloadMonth(color=green, year=2021, month=2) FAILED")
    assert "HTTP 503 from http://127.0.0.1:" in body and "green_tripdata_2021-02.parquet" in body


def test_failing_run_monthly_exits_non_zero_after_the_retries_and_mails_each_failure(fresh, tlc_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "green_tripdata_2023-01.parquet").write_bytes(b"<html>not a parquet file</html>")
    shutil.copy(tlc_dir / "green_tripdata_2023-02.parquet", mirror)
    config = fresh.profile("broken", str(mirror))
    fresh.inbox.messages.clear()
    done = fresh.script(config, "run-monthly", "green", "--as-of", "2023-04-20")
    assert done.returncode == 30, done.stderr[-3000:]  # [retcode] task_failed
    assert fresh.events("DownloadMonth", year="2023", month="1") == [
        "PENDING", *["RUNNING", "FAILED"] * RETRY_COUNT]
    [disabled] = fresh.scheduler_tasks("DISABLED", "DownloadMonth").values()
    assert disabled["params"] == {"color": "green", "year": "2023", "month": "1"} and disabled["re_enable_able"]
    assert len(fresh.inbox.texts()) == RETRY_COUNT
    for subject, body in fresh.inbox.texts():
        assert subject.startswith("Luigi: DownloadMonth(color=green, year=2023, month=1) FAILED")
        assert "green_tripdata_2023-01.parquet is not a readable parquet file" in body


def test_services_script_starts_and_stops_luigid_and_mlflow(tmp_path):
    ports = {"LUIGID_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
    env = {**os.environ, "TAXI_VAR": str(tmp_path), **ports}
    started = subprocess.run([str(ROOT / "scripts/services"), "start"], capture_output=True, text=True, env=env,
                             timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        visualiser, mlflow_ui = (f"http://127.0.0.1:{ports[k]}" for k in ("LUIGID_PORT", "MLFLOW_PORT"))
        assert f"visualiser: {visualiser}   MLflow UI: {mlflow_ui}" in started.stdout
        assert "Luigi Task Status" in requests.get(visualiser, timeout=10).text
        assert requests.get(f"{mlflow_ui}/health", timeout=10).text == "OK"
        assert (tmp_path / "luigid" / "history.db").exists()
        pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("luigid", "mlflow")]
    finally:
        stopped = subprocess.run([str(ROOT / "scripts/services"), "stop"], capture_output=True, text=True, env=env,
                                 timeout=120)
    assert stopped.returncode == 0 and stopped.stdout.split("\n")[:2] == ["mlflow stopped", "luigid stopped"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(visualiser, timeout=5)
    assert (tmp_path / "luigid" / "state.pickle").exists()  # luigid saved its state on SIGTERM
