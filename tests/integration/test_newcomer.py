"""What a new user and an operator meet first (issue 13), each the way they meet it: the README's first command as
written in a fresh copy of the checkout, its model-loading snippet from another folder, the first line of an offline
run, one store serving one registry, and the tracking URLs and run durations luigid and MLflow show."""

from __future__ import annotations

import ast
import configparser
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from taxi import data, layout, metrics
from taxi.registry import model_name
from tests.support.browser import chromium
from tests.support.luigi_process import private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import Service, free_port, luigid_service, mlflow_service
from tests.support.store import one_file

MONTH = ("--year", "2021", "--month", "1")
MODEL = model_name("green")
log = logging.getLogger(__name__)

HINT = "offline? set [taxi] source or TAXI_SOURCE to a mirror folder of TLC files"


def not_info(stderr: str) -> list[str]:
    """The lines of a run's stderr that are not Luigi's or the pipeline's INFO progress: what a user reads first."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("INFO:", "DEBUG:"))]


# ---------------------------------------------------------------------------------------------------------------
# The README's quick start, as a new user follows it

CLEAN_ENV = ("LUIGI_CONFIG_PATH", "MLFLOW_TRACKING_URI", "TAXI_SOURCE", "TAXI_WEBHOOK_URL")


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]


def first_command() -> str:
    """The quick start's first command line, as a user pastes it."""
    return next(line[2:] for line in quick_start().splitlines() if line.startswith("$ "))


def user_env() -> dict[str, str]:
    """The environment of a user's shell: none of the pipeline's settings."""
    return {name: value for name, value in os.environ.items() if name not in CLEAN_ENV}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, sampled_tlc) -> tuple[Path, subprocess.CompletedProcess]:
    """The quick start's first command, as written, in a fresh copy of the checkout (the files git tracks; this .venv,
    made already): the mirror folder it names holds the two sampled months, the copy's luigi.cfg a small tuning
    budget and a lock folder of its own. Yields the copy and the command's outcome."""
    checkout = tmp_path_factory.mktemp("newcomer") / "taxi"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    command = first_command()
    mirror = re.search(r"TAXI_SOURCE=(\S+)", command)
    assert mirror, f"the first command should work offline, with a mirror folder: {command}"
    mirror = checkout / mirror.group(1)
    mirror.mkdir(parents=True, exist_ok=True)
    for month in ("2021-01", "2021-02"):
        shutil.copyfile(sampled_tlc / f"green_tripdata_{month}.parquet", mirror / f"green_tripdata_{month}.parquet")
    config = configparser.ConfigParser(interpolation=None)
    config.read(checkout / "luigi.cfg")
    config["TuneHyperparams"] = SMALL_TUNING
    config["core"].update(private_lock(checkout.parent))
    with open(checkout / "luigi.cfg", "w") as f:
        config.write(f)
    run = subprocess.run(["bash", "-c", command], cwd=checkout, capture_output=True, text=True, timeout=600,
                         env=user_env())
    return checkout, run


def test_the_quick_starts_first_command_works_as_written(demo):
    """From a fresh copy, offline with the mirror the command names: the model is registered in the copy's
    ./mlflow.db and the demo says where the report is and how to load the model."""
    checkout, run = demo
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "8 ran successfully" in run.stderr and f"Model:    {MODEL} v1 (champion)" in run.stdout
    report = Path(re.search(r"^Report: +(\S+)", run.stdout, re.MULTILINE).group(1))
    assert report.is_absolute() and report.is_file() and report.is_relative_to(checkout / "data" / "runs")
    record = json.loads((report.parent / "registration.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{checkout}/mlflow.db" and record["version"] == 1


def test_the_demo_s_mlflow_ui_links_open_on_its_run_and_model_version(demo, tmp_path):
    """The `mlflow ui` command the demo prints, started on a free port, and its two links opened in headless
    Chromium: the run the registered version came from (its id read from the registry), and that version."""
    checkout, run = demo
    ui = re.search(r"^MLflow UI: (\S+) ui --backend-store-uri (\S+) --port 5000, then open$", run.stdout, re.MULTILINE)
    assert ui and ui.group(2) == f"sqlite:///{checkout}/mlflow.db", run.stdout
    run_link = re.search(r"^    the run: +(\S+)$", run.stdout, re.MULTILINE).group(1)
    version_link = re.search(r"^    the model version: +(\S+)$", run.stdout, re.MULTILINE).group(1)
    client = MlflowClient(ui.group(2))
    version = client.get_model_version(MODEL, "1")
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    assert run_link == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{version.run_id}"
    assert version_link == f"http://127.0.0.1:5000/#/models/{MODEL}/versions/1"
    port = free_port()
    server = Service("mlflow ui", [str(checkout / ui.group(1)), "ui", "--backend-store-uri", ui.group(2), "--port",
                                   str(port), "--workers", "1"], port, "/health", tmp_path / "ui.log",
                     env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    browser = None
    try:
        server.start()
        browser = chromium(tmp_path / "chromium")
        for link, shown in ((run_link, ("training green 2021-01", version.run_id, "train_rmse")),
                            (version_link, (MODEL, "Version 1", "Source Run", "training green 2021-01", "champion"))):
            browser.get(link.replace(":5000/", f":{port}/"))
            WebDriverWait(browser, 60).until(lambda b, shown=shown: all(
                text in b.find_element(By.TAG_NAME, "body").text for text in shown), link)
            assert "Welcome to MLflow" not in browser.find_element(By.TAG_NAME, "body").text  # not the home page
    finally:
        if browser:
            browser.quit()
        server.stop()


def test_the_readme_snippet_loads_the_model_from_another_folder(demo, tmp_path):
    """The quick start's Python snippet, with the registry the demo printed, run in a folder of its own: it loads
    the champion and predicts, and leaves that folder empty (no stray mlflow.db)."""
    checkout, run = demo
    printed = re.search(r'mlflow\.set_tracking_uri\("(sqlite:///[^"]+)"\)', run.stdout)
    assert printed and printed.group(1) == f"sqlite:///{checkout}/mlflow.db", run.stdout
    snippet = quick_start().split("```python\n", 1)[1].split("```", 1)[0]
    snippet = re.sub(r'set_tracking_uri\("[^"]*"\)', f'set_tracking_uri("{printed.group(1)}")', snippet)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", snippet], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300, env=user_env())
    assert done.returncode == 0, done.stderr[-3000:]
    [minutes] = re.findall(r"\d+\.\d+", done.stdout)
    trip = re.search(r"pd\.DataFrame\(\[(\{.*?\})\]\)", snippet, re.S).group(1)  # the snippet's own trip
    mlflow.set_tracking_uri(printed.group(1))
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert float(minutes) == pytest.approx(champion.predict(pd.DataFrame([ast.literal_eval(trip)]))[0], rel=1e-5)
    assert list(elsewhere.iterdir()) == []


def test_the_quick_starts_scoring_command_scores_the_month_after_with_the_champion(demo):
    """The quick start's last command, as written, after the demo: February scored with v1, the line it prints is
    the live.json it wrote, and every cleaned trip has its prediction."""
    checkout, _ = demo
    command = next(line[2:] for line in quick_start().splitlines() if line.startswith("$ ") and "scripts/score" in line)
    run = subprocess.run(["bash", "-c", command], cwd=checkout, capture_output=True, text=True, timeout=600,
                         env=user_env())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    [live_path] = (checkout / "data" / "scores" / "green" / "2021-02").glob("v1/live.json")
    live = json.loads(live_path.read_text())
    printed = (f"green 2021-02 scored with {MODEL} v1: live RMSE {live['rmse']:.4f} min, MAE {live['mae']:.4f} min, "
               f"{live['rows']:,} trips (registered RMSE {live['registered_rmse']:.4f}, alert above ")
    assert printed in run.stderr and "4 ran successfully" in run.stderr
    cleaned = next((checkout / "data" / "clean").rglob("green/2021-02.parquet"))
    assert pq.read_metadata(live_path.parent / "predictions.parquet").num_rows == pq.read_metadata(cleaned).num_rows
    assert live["tracking_uri"] == f"sqlite:///{checkout}/mlflow.db" and live["alert"] is False


# ---------------------------------------------------------------------------------------------------------------
# Offline, without a mirror


def test_offline_without_a_mirror_the_first_line_names_the_cause_and_the_fix(tmp_path):
    """A source nobody answers at (as offline: no connection at all): the first line that is not progress names the
    host, the reason and what to do; so does the task's failure line, before Luigi's traceback."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path / "offline.cfg", {
        "taxi": {"source": url, "store": str(tmp_path / "store"), "download_retries": "1", "retry_backoff": "0.05"},
        "core": private_lock(tmp_path)})
    run = run_luigi(tmp_path, config, "DownloadMonth", *MONTH, timeout=120)
    assert run.returncode == 30, run.stderr[-3000:]
    file = f"{url}/green_tripdata_2021-01.parquet"
    cause = f"cannot reach 127.0.0.1 for {file} ([Errno 111] Connection refused)"
    lines = not_info(run.stderr)
    assert lines[0] == f"WARNING: taxi.source: {cause}; {HINT}; retry 1/1 in 0.1s", lines[:3]
    failed = next(line for line in lines if line.startswith("ERROR"))
    assert failed == (f"ERROR: taxi.tasks: DownloadMonth(color=green, year=2021, month=1) failed: SourceUnreachable: "
                      f"{cause} (gave up after 2 attempts); {HINT}")
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------------------------
# One store, one registry


def status(workdir: Path, config: Path) -> subprocess.CompletedProcess:
    """`scripts/status` with the profile `config`, from `workdir`."""
    return subprocess.run([str(ROOT / "scripts" / "status")], cwd=workdir, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})


def test_a_store_serves_the_registry_of_its_first_run_and_any_other_is_refused_naming_both(tmp_path, sampled_tlc):
    """The demo's sqlite registry first; the same store pointed at an `mlflow server` is refused before anything
    reaches the server (registering or scoring), and so is `scripts/status`, naming both registries. Without its
    record the store moves to the server, which gets the stored model; reached by another URL, the server is the same
    registry: nothing is logged twice."""
    store, database = tmp_path / "store", tmp_path / "mlflow.db"
    sections = {"taxi": {"source": str(sampled_tlc), "store": str(store), "threads": "1"},
                "TuneHyperparams": SMALL_TUNING, "core": private_lock(tmp_path)}
    local = write_config(tmp_path / "local.cfg", {**sections, "mlflow": {
        "tracking_uri": f"sqlite:///{database}", "artifact_location": str(tmp_path / "mlartifacts")}})
    first = run_luigi(tmp_path, local, "RegisterModel", *MONTH)
    assert first.returncode == 0, first.stderr[-3000:]
    sqlite_experiment = MlflowClient(f"sqlite:///{database}").get_experiment_by_name("taxi-duration")
    assert json.loads((store / layout.REGISTRY_RECORD).read_text())["experiment_id"] == sqlite_experiment.experiment_id

    server = mlflow_service(tmp_path / "server").start()
    try:
        central = write_config(tmp_path / "central.cfg", {**sections, "mlflow": {"tracking_uri": server.url}})
        client = MlflowClient(server.url)
        for task in (("RegisterModel", *MONTH), ("ScoreMonth", "--year", "2021", "--month", "2")):
            refused = run_luigi(tmp_path, central, *task)
            assert refused.returncode != 0, refused.stderr[-3000:]
            assert (f"OtherRegistry: the store {store} serves the registry at sqlite:///{database} (experiment "
                    f"{sqlite_experiment.experiment_id} created" in refused.stderr), refused.stderr[-3000:]
            assert f"but this is the registry at {server.url} (no experiment taxi-duration there)" in refused.stderr
        assert client.search_registered_models() == [] and client.get_experiment_by_name("taxi-duration") is None

        shown = status(tmp_path, central)
        assert shown.returncode == 1 and shown.stdout == ""
        [line] = shown.stderr.strip().splitlines()
        assert line.startswith(f"ERROR: taxi.status: the store {store} serves the registry at sqlite:///{database}")
        assert f"but this is the registry at {server.url}" in line

        # moved for good: without its record, the store serves the next registry it runs against, which gets each
        # month's stored model logged again (no tuning, no training)
        trained = json.loads(next(store.rglob("train.json")).read_text())
        (store / layout.REGISTRY_RECORD).unlink()
        moved = run_luigi(tmp_path, central, "RegisterModel", *MONTH)
        assert moved.returncode == 0, moved.stderr[-3000:]
        assert "1 ran successfully" in moved.stderr and "RegisterModel(" in moved.stderr.split("ran successfully")[1]
        assert (f"logged in sqlite:///{database}, not in {server.url}: logging the stored model there again"
                in moved.stderr)
        [version] = client.search_model_versions(f"name='{MODEL}'")
        assert version.run_id != trained["run_id"]
        # the version the server holds is the stored model: re-scored here on the validation month's selection rows,
        # its RMSE is the one TrainModel measured (what the run logs is only copied from train.json)
        valid = pd.read_parquet(one_file(store, layout.CLEAN, color="green", ym="2021-02"))
        valid = valid[~data.gate_rows(valid, 0.5)].rename(columns={"pickup_datetime": "lpep_pickup_datetime"})
        mlflow.set_tracking_uri(server.url)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
        assert metrics.rmse(valid["duration"].to_numpy(), model.predict(valid)) == pytest.approx(trained["val_rmse"])
        assert run_luigi(tmp_path, local, "RegisterModel", *MONTH).returncode != 0

        by_name = server.url.replace("127.0.0.1", "localhost")
        other_url = write_config(tmp_path / "by-name.cfg", {**sections, "mlflow": {"tracking_uri": by_name}})
        shown = status(tmp_path, other_url)
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"^2021-01 +v{version.version} +champion ", shown.stdout, re.MULTILINE), shown.stdout
        experiment = client.get_run(version.run_id).info.experiment_id
        runs = {run.info.run_id for run in client.search_runs([experiment])}
        again = run_luigi(tmp_path, other_url, "RegisterModel", *MONTH)
        assert again.returncode == 0, again.stderr[-3000:]
        assert [(v.version, v.run_id) for v in client.search_model_versions(f"name='{MODEL}'")] == [
            (version.version, version.run_id)]
        assert {run.info.run_id for run in client.search_runs([experiment])} == runs
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# What the visualiser and the MLflow UI show, for a run through luigid against an `mlflow server`

@pytest.fixture(scope="module")
def central(tmp_path_factory, tlc_dir):
    """RegisterModel of the real 2021-01 through a real luigid, logging to a real `mlflow server`, with seconds of
    tuning and training (what a task does besides, e.g. connecting, stays a small share); yields the workdir, the
    MLflow server's URL and luigid's DONE tasks by family."""
    workdir = tmp_path_factory.mktemp("central")
    mlflow, scheduler = mlflow_service(workdir / "mlflow"), luigid_service(workdir / "luigid")
    try:
        mlflow.start(), scheduler.start()
        config = write_config(workdir / "central.cfg", {
            "taxi": {"source": str(tlc_dir), "store": str(workdir / "store")},
            "mlflow": {"tracking_uri": mlflow.url}, "TuneHyperparams": SMALL_TUNING,
            "core": {**private_lock(workdir), "local_scheduler": "false", "scheduler_url": scheduler.url}})
        done = run_luigi(workdir, config, "RegisterModel", *MONTH)
        assert done.returncode == 0, done.stderr[-3000:]
        query = {"data": json.dumps({"status": "DONE"})}
        tasks = requests.get(f"{scheduler.url}/api/task_list", params=query, timeout=10).json()["response"]
        yield workdir, mlflow.url, {task["name"]: task for task in tasks.values()}
    finally:
        scheduler.stop()
        mlflow.stop()


def tuning_run(client: MlflowClient):
    """The search's parent run (its trials are nested runs without the stage tag)."""
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    [run] = client.search_runs([experiment], "tags.`taxi.stage` = 'tuning'")
    return run


def test_luigid_links_tuning_training_and_registration_to_their_mlflow_pages(central):
    workdir, mlflow_url, tasks = central
    client = MlflowClient(mlflow_url)
    trained = json.loads(next((workdir / "store").rglob("train.json")).read_text())
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    assert {family: tasks[family]["tracking_url"] for family in ("TuneHyperparams", "TrainModel", "RegisterModel")} == {
        "TuneHyperparams": f"{mlflow_url}/#/experiments/{experiment}/runs/{tuning_run(client).info.run_id}",
        "TrainModel": f"{mlflow_url}/#/experiments/{experiment}/runs/{trained['run_id']}",
        "RegisterModel": f"{mlflow_url}/#/models/{MODEL}/versions/1"}
    assert client.get_model_version(MODEL, "1").run_id == trained["run_id"]


def test_mlflow_run_durations_are_within_a_fifth_of_the_tasks_own_timing(central):
    """A run is opened before the work it describes: its duration in MLflow is what the task itself measured."""
    workdir, mlflow_url, _ = central
    client = MlflowClient(mlflow_url)
    trained = json.loads(next((workdir / "store").rglob("train.json")).read_text())
    tuned = json.loads(next((workdir / "store").rglob("best_params.json")).read_text())
    durations = {}
    for what, run, seconds in (("tuning", tuning_run(client), tuned["seconds"]),
                               ("training", client.get_run(trained["run_id"]), trained["seconds"])):
        durations[what] = ((run.info.end_time - run.info.start_time) / 1000, seconds)
    log.info("MLflow run and task seconds: %s", durations)
    assert all(abs(run - task) <= 0.2 * task for run, task in durations.values()), durations
