"""scripts/status against real services: an `mlflow server` holding what two real RegisterModel runs registered
(then an operator moved the champion alias by hand), a real luigid with a failed, a disabled and a running task, the
same store in a real S3 server, and the one-line errors when the tracking server is down or answers 500."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from taxi import layout
from taxi.registry import model_name
from tests.support.flaky_http import STALL, FlakyMirror
from tests.support.http_proxy import CHAMPION_LOOKUP, Proxy
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.s3server import SeaweedS3
from tests.support.services import Service, free_port, luigid_service, mlflow_service
from tests.support.store import pattern

MODEL = model_name("green")
HEADER = ["month", "version", "alias now", "decision", "gate RMSE", "registered (UTC)", "report", "reason"]


@dataclasses.dataclass
class Trained:
    workdir: Path
    mlflow: Service
    luigid: Service
    sections: dict[str, dict[str, str]]  # the runs' configuration; status runs with it plus the scheduler's
    registrations: dict[str, dict]  # training month -> its registration.json
    reports: dict[str, Path]  # training month -> its report.md


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status-services")
    mlflow = mlflow_service(workdir / "mlflow").start()
    try:
        luigid = luigid_service(workdir / "luigid")
        config = workdir / "luigid" / "luigid.cfg"  # a task is disabled at its second failure (retry policy)
        config.write_text(config.read_text().replace("[scheduler]\n", "[scheduler]\nretry_count = 2\n"))
        luigid.start()
        yield mlflow, luigid
        luigid.stop()
    finally:
        mlflow.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sampled_tlc, services) -> Trained:
    """2021-01 registered (champion), then 2023-01 (challenger: its shuffled distances make it worse than 2021-01's
    model on 2023-02's gate rows), then an operator made 2023-01 champion by hand; against luigid, a month missing from
    the mirror failed once, and another one twice (so it is disabled)."""
    mlflow, luigid = services
    workdir = tmp_path_factory.mktemp("status")
    sections = {"taxi": {"source": str(sampled_tlc), "store": str(workdir / "store"), "threads": "1"},
                "mlflow": {"tracking_uri": mlflow.url}, "TuneHyperparams": SMALL_TUNING, "core": private_lock(workdir)}
    config = write_config(workdir / "local.cfg", sections)
    for year in ("2021", "2023"):
        done = run_luigi(workdir, config, "RegisterModel", "--year", year, "--month", "1")
        assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow.url)
    client.set_registered_model_alias(MODEL, "champion", "2")
    central = with_scheduler(workdir / "central.cfg", sections, luigid.url)
    for month in ("5", "6", "6"):
        failed = run_luigi(workdir, central, "DownloadMonth", "--year", "2020", "--month", month)
        assert failed.returncode == 30, failed.stderr[-3000:]
    store = workdir / "store"
    records = {layout.run_month(str(path.relative_to(store))): path
               for path in store.glob(pattern(layout.RUN, color="green", name=layout.REGISTRATION))}
    return Trained(workdir, mlflow, luigid, sections,
                   {month: json.loads(path.read_text()) for month, path in records.items()},
                   {month: path.parent / "report.md" for month, path in records.items()})


def with_scheduler(path: Path, sections: dict, url: str) -> Path:
    return write_config(path, {**sections, "core": {**sections["core"], "local_scheduler": "false",
                                                    "scheduler_url": url}})


def status(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """scripts/status as an operator runs it, with the profile `config`."""
    return subprocess.run([str(ROOT / "scripts" / "status"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config), **(env or {})})


def table(stdout: str, model: str = MODEL) -> list[dict[str, str]]:
    """The rows of `model`'s table, each as {column: cell}, in printed order."""
    lines = stdout.split(f"{model} (registry ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    header = re.split(r"\s{2,}", lines[0])
    assert header == HEADER, lines[0]
    return [dict(zip(header, re.split(r"\s{2,}", line))) for line in lines[1:] if line.strip()[:4].isdigit()]


def registered_at(client: MlflowClient, version: int) -> str:
    created = client.get_model_version(MODEL, str(version)).creation_timestamp / 1000
    return dt.datetime.fromtimestamp(created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def test_table_shows_each_trained_month_with_its_alias_now_and_its_decision_then(trained):
    shown = status(with_scheduler(trained.workdir / "shown.cfg", trained.sections, trained.luigid.url))
    assert shown.returncode == 0, shown.stderr[-3000:]
    client = MlflowClient(trained.mlflow.url)
    aliases = client.get_registered_model(MODEL).aliases  # alias -> version: v2, a challenger, is champion now
    rows = table(shown.stdout)
    assert rows == [{"month": month, "version": f"v{r['version']}",
                     "alias now": next((a for a in ("champion", "challenger") if aliases.get(a) == str(r["version"])),
                                       "none"),
                     "decision": r["decision"], "gate RMSE": f"{r['gate_rmse']:.4f}",
                     "registered (UTC)": registered_at(client, r["version"]), "report": str(trained.reports[month]),
                     "reason": r["reason"]}
                    for month, r in sorted(trained.registrations.items())]
    # the operator's promotion: neither row's alias now is the decision made when it was registered
    assert [(row["month"], row["alias now"], row["decision"]) for row in rows] == [
        ("2021-01", "none", "champion"), ("2023-01", "champion", "challenger")]
    assert all(Path(row["report"]).is_file() for row in rows)
    assert f"{model_name('yellow')}: no trained month in {trained.workdir / 'store'}" in shown.stdout


def test_a_reader_that_stops_early_gets_no_traceback_and_the_status_exits_0(trained):
    """`scripts/status | head -1`, where the reader is gone before the table is written (`true` reads nothing)."""
    config = with_scheduler(trained.workdir / "piped.cfg", trained.sections, trained.luigid.url)
    for reader in ("head -1", "true"):
        done = subprocess.run(["bash", "-c", f'"$0" | {reader}; exit "${{PIPESTATUS[0]}}"', str(ROOT / "scripts" /
                                                                                             "status")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
        assert done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (
            reader, done.returncode, done.stderr[-2000:])
        shown = {"head -1": done.stdout.startswith(f"{MODEL} (registry ") and done.stdout.count("\n") == 1,
                 "true": done.stdout == ""}
        assert shown[reader], done.stdout


def test_a_color_argument_shows_only_that_color(trained):
    shown = status(write_config(trained.workdir / "yellow.cfg", trained.sections), "yellow")
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.startswith(f"{model_name('yellow')}: no trained month in {trained.workdir / 'store'}\n")
    assert MODEL not in shown.stdout


def test_luigid_section_lists_what_it_has_running_failed_and_disabled(trained, sampled_tlc):
    """Months missing from the mirror failed and were disabled (fixture); a download stalls while status runs."""
    workdir = trained.workdir / "stalled"
    workdir.mkdir()
    with FlakyMirror(sampled_tlc, stall_seconds=60) as mirror:
        mirror.script = [STALL]
        stalled_sections = {**trained.sections, "taxi": {**trained.sections["taxi"], "source": mirror.url,
                                                         "store": str(workdir / "store"),
                                                         "download_timeout": "300"},
                            "core": private_lock(workdir)}
        run = LuigiProcess(workdir, with_scheduler(workdir / "stalled.cfg", stalled_sections, trained.luigid.url),
                           "DownloadMonth", "--year", "2021", "--month", "1", name="stalled")
        try:
            run.wait_until(lambda: running(trained.luigid), "a running task in luigid")
            shown = status(with_scheduler(workdir / "shown.cfg", trained.sections, trained.luigid.url))
        finally:
            run.kill()
    assert shown.returncode == 0, shown.stderr[-3000:]
    section = shown.stdout[shown.stdout.index(f"luigid {trained.luigid.url}: "):].splitlines()
    assert section[0] == f"luigid {trained.luigid.url}: 1 running, 1 failed, 1 disabled"
    assert re.fullmatch(r"FAILED +[\d-]+ [\d:]+  DownloadMonth\(color=green, month=5, year=2020\)", section[1])
    assert re.fullmatch(r"DISABLED [\d-]+ [\d:]+  DownloadMonth\(color=green, month=6, year=2020\)", section[2])
    assert re.fullmatch(r"RUNNING +[\d-]+ [\d:]+  DownloadMonth\(color=green, month=1, year=2021\)", section[3])
    assert len(section) == 4


def running(luigid: Service) -> list[dict]:
    query = {"data": json.dumps({"status": "RUNNING"})}
    return list(requests.get(f"{luigid.url}/api/task_list", params=query, timeout=10).json()["response"].values())


def test_without_a_reachable_central_scheduler_one_line_says_so(trained):
    local = status(write_config(trained.workdir / "local-only.cfg", trained.sections))
    closed = f"http://127.0.0.1:{free_port()}"
    down = status(with_scheduler(trained.workdir / "down.cfg", trained.sections, closed))
    assert local.returncode == down.returncode == 0, local.stderr[-3000:] + down.stderr[-3000:]
    assert len(table(local.stdout)) == len(table(down.stdout)) == 2
    assert local.stdout.rstrip().splitlines()[-1] == \
        "luigid: no central scheduler is configured ([core] local_scheduler = true)"
    assert down.stdout.rstrip().splitlines()[-1] == f"luigid {closed}: not reachable (ConnectionError)"


def test_another_registry_is_refused_and_a_store_from_before_the_record_shows_its_rows_as_missing(trained):
    """The same store with an empty local registry: refused in one line naming both registries. A store that has not
    recorded its registry shows every row there as missing: no version there is the one its registration.json
    names."""
    sections = {**trained.sections, "mlflow": {"tracking_uri": f"sqlite:///{trained.workdir}/other.db"}}
    other = write_config(trained.workdir / "other.cfg", sections)
    store = trained.workdir / "store"
    refused = status(other)
    assert refused.returncode == 1 and refused.stdout == ""
    line = refused.stderr.strip().splitlines()[-1]  # after MLflow's lines creating the new database
    assert line.startswith(f"ERROR: taxi.status: the store {store} serves the registry at http")
    assert f"but this is the registry at sqlite:///{trained.workdir}/other.db" in line
    record = store / layout.REGISTRY_RECORD
    served = record.read_text()
    record.unlink()
    try:
        shown = status(other)
    finally:
        record.write_text(served)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert [(row["month"], row["alias now"], row["registered (UTC)"]) for row in table(shown.stdout)] == [
        ("2021-01", "missing", "-"), ("2023-01", "missing", "-")]
    assert "missing: registered in another registry (see its registration.json), not in sqlite:///" in shown.stdout


def test_tracking_server_down_is_one_clear_line_and_a_failure(trained):
    down = f"http://127.0.0.1:{free_port()}"
    sections = {**trained.sections, "mlflow": {"tracking_uri": down}}
    shown = status(write_config(trained.workdir / "mlflow-down.cfg", sections))
    assert shown.returncode == 1
    assert shown.stdout == ""
    assert shown.stderr.strip().splitlines() == [
        f"ERROR: taxi.status: MLflow tracking server {down} is not reachable (ConnectionError); start it "
        f"(scripts/services start) or set [mlflow] tracking_uri / MLFLOW_TRACKING_URI"]


def test_a_registry_error_is_one_clear_line_and_a_failure(trained):
    with Proxy(trained.mlflow.url) as proxy:
        proxy.fail("GET", CHAMPION_LOOKUP, 500)
        sections = {**trained.sections, "mlflow": {"tracking_uri": proxy.url}}
        shown = status(write_config(trained.workdir / "mlflow-500.cfg", sections),
                       env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert shown.returncode == 1
    assert shown.stdout == ""
    [line] = shown.stderr.strip().splitlines()
    assert line.startswith(f"ERROR: taxi.status: the MLflow registry at {proxy.url} answered: ") and "500" in line


def test_an_s3_store_is_listed_like_a_folder(trained, tmp_path):
    """The store's run folders copied into a real S3 server: the same rows, reports named by their s3:// URL."""
    s3 = SeaweedS3(tmp_path / "seaweedfs").start()
    try:
        s3.create_bucket("taxi")
        store = trained.workdir / "store"
        for path in (store / "runs").rglob("*"):
            if path.name in ("registration.json", "report.md"):
                s3.client().upload_file(str(path), "taxi", f"store/{path.relative_to(store)}")
        sections = {**trained.sections, "taxi": {"store": "s3://taxi/store"}, "s3": {"endpoint_url": s3.endpoint,
                                                                                      "region_name": "us-east-1"}}
        shown = status(write_config(tmp_path / "s3.cfg", sections), "green", env=s3.env)
        keys = s3.keys("taxi", "store/")
    finally:
        s3.stop()
    assert shown.returncode == 0, shown.stderr[-3000:]
    rows = table(shown.stdout)
    assert len(rows) == len(trained.registrations) >= 2, shown.stdout
    assert [(row["month"], row["version"]) for row in rows] == [
        (month, f"v{r['version']}") for month, r in sorted(trained.registrations.items())]
    for row in rows:
        assert row["report"].startswith("s3://taxi/store/runs/green/") and row["report"][len("s3://taxi/"):] in keys
