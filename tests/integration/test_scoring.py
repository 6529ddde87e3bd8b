"""Scoring months with the champion (issue 19), the way an operator runs it: real `luigi` processes and
scripts/score against a real `mlflow server`, luigid, SMTP server and webhook receiver on 127.0.0.1, on sampled
months. Each check compares with an independent computation: the pyfunc loaded here from the registry, the cleaned
rows read here, the bytes at the target paths."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests
from aiosmtpd.controller import Controller
from mlflow.tracking import MlflowClient

from bench import synthetic
from taxi import data, layout, notify, scoring
from taxi.pipeline.scoring import ALERT_SHARE
from taxi.registry import model_name
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import Service, free_port, luigid_service, mlflow_service
from tests.support.store import one_file, run_file, raw_rows
from tests.integration.test_notify import Receiver
from tests.integration.test_ops import Inbox

MODEL = model_name("green")
FEBRUARY = ("--year", "2021", "--month", "2")
SHIFT = np.timedelta64(15, "m")  # the shifted month's trips take this much longer than the model expects
GATE_SHARE = 0.5  # [BuildFeatures] gate_share's default: the share of the validation month kept for the gate
PREDICTED_COLUMNS = ["ride_id", "pickup_datetime", "PULocationID", "DOLocationID", "trip_distance",
                     "actual_duration", "predicted_duration", "diff", "model_name", "model_version", "model_run_id"]


@dataclasses.dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr


@dataclasses.dataclass
class Scored:
    """What the module's runs did, in order, and the services they used."""

    workdir: Path
    store: Path
    config: Path
    mlflow: Service
    luigid: Service
    runs: dict[str, Run]
    first_bytes: dict[str, bytes]  # the first scoring of February, file by file
    rescored_bytes: bytes  # February's predictions scored again by another process, its files deleted
    before_new_champion: dict[str, bytes]  # v1's February files before v2 became champion
    champion_and_newest: tuple[int, int]  # the registry's champion and newest version when January was scored
    webhook: list[str]  # every text the webhook received
    mails: list[tuple[str, str]]  # (subject, body) of every mail

    def scores(self, month: str, version: int, name: str) -> Path:
        return self.store / layout.scores("green", int(month[:4]), int(month[5:]), version)[name]

    def cleaned(self, month: str) -> pd.DataFrame:
        return pd.read_parquet(one_file(self.store, layout.CLEAN, color="green", ym=month))

    def client(self) -> MlflowClient:
        return MlflowClient(self.mlflow.url)

    def pyfunc(self, version: int):
        """The version's pyfunc, loaded here from the registry as a user loads it."""
        mlflow.set_tracking_uri(self.mlflow.url)
        return mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")

    def gate_rmse(self, version: int, valid_month: str) -> float:
        """The version's RMSE on its validation month's gate rows, recomputed here with its pyfunc."""
        valid = self.cleaned(valid_month)
        gate = valid[data.gate_rows(valid, GATE_SHARE)]
        predicted = self.pyfunc(version).predict(raw_rows(gate))
        return float(np.sqrt(np.mean((gate["duration"].to_numpy() - predicted) ** 2)))


def shifted_month(source: Path, dest: Path, month: int = 3) -> None:
    """Green 2021-`month` from the sampled February's trips, each SHIFT longer: a month the model gets wrong."""
    table = synthetic.make_month(synthetic.read_sources([str(source)]), 8000, "green", 2021, month, seed=3)
    column = table.schema.get_field_index("lpep_dropoff_datetime")
    dropoff = pc.add(table["lpep_dropoff_datetime"], pa.scalar(SHIFT.astype("timedelta64[us]").item(),
                                                                 pa.duration("us")))
    synthetic.write_month(table.set_column(column, "lpep_dropoff_datetime", dropoff), str(dest))


def luigi_run(scored_workdir: Path, config: Path, *args: str, env: dict[str, str]) -> Run:
    done = run_luigi(scored_workdir, config, *args, env=env)
    return Run(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, sampled_tlc) -> Scored:
    """On sampled months: green 2021-01 trained and registered (v1, champion); February scored through luigid, scored
    again (a no-op), deleted and scored by another process; the shifted March scored; 2023-01 registered (v2, the
    newest version but not champion), January scored; v2 made champion by hand, then February scored again. Every run
    posts to one webhook and mails to one SMTP server."""
    workdir = tmp_path_factory.mktemp("scoring")
    mirror = workdir / "mirror"
    shutil.copytree(sampled_tlc, mirror)
    shifted_month(sampled_tlc / "green_tripdata_2021-02.parquet", mirror / "green_tripdata_2021-03.parquet")
    server, scheduler = mlflow_service(workdir / "mlflow"), luigid_service(workdir / "luigid")
    inbox, receiver = Inbox(), Receiver()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    try:
        server.start(), scheduler.start(), smtp.start()
        sections = {"taxi": {"source": str(mirror), "store": str(workdir / "store"), "threads": "1"},
                    "mlflow": {"tracking_uri": server.url}, "TuneHyperparams": SMALL_TUNING,
                    "core": private_lock(workdir),
                    "email": {"method": "smtp", "receiver": "ops@example.org", "sender": "taxi@localhost"},
                    "smtp": {"host": "127.0.0.1", "port": str(smtp.port)}}
        config = write_config(workdir / "scoring.cfg", sections)
        central = write_config(workdir / "central.cfg", {**sections, "core": {
            **sections["core"], "local_scheduler": "false", "scheduler_url": scheduler.url}})
        env = {notify.ENV: receiver.url}
        runs = {"train": luigi_run(workdir, config, "RegisterModel", "--year", "2021", "--month", "1", env=env)}
        assert runs["train"].returncode == 0, runs["train"].output[-3000:]
        runs["first"] = luigi_run(workdir, central, "ScoreMonth", *FEBRUARY, env=env)
        folder = workdir / "store" / Path(layout.scores("green", 2021, 2, 1)[layout.LIVE]).parent
        first_bytes = {path.name: path.read_bytes() for path in folder.iterdir()}
        runs["rerun"] = luigi_run(workdir, config, "ScoreMonth", *FEBRUARY, env=env)
        shutil.rmtree(folder)
        runs["another-process"] = luigi_run(workdir, config, "ScoreMonth", *FEBRUARY, env=env)
        rescored_bytes = (folder / layout.PREDICTIONS).read_bytes()
        runs["shifted"] = luigi_run(workdir, config, "ScoreMonth", "--year", "2021", "--month", "3", env=env)
        before_new_champion = {path.name: path.read_bytes() for path in folder.iterdir()}
        runs["train-2023"] = luigi_run(workdir, config, "RegisterModel", "--year", "2023", "--month", "1", env=env)
        client = MlflowClient(server.url)
        champion_and_newest = (int(client.get_model_version_by_alias(MODEL, "champion").version),
                               max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'")))
        runs["newest-not-champion"] = luigi_run(workdir, config, "ScoreMonth", "--year", "2021", "--month", "1",
                                                env=env)
        client.set_registered_model_alias(MODEL, "champion", "2")
        runs["new-champion"] = luigi_run(workdir, config, "ScoreMonth", *FEBRUARY, env=env)
        yield Scored(workdir, workdir / "store", config, server, scheduler, runs, first_bytes, rescored_bytes,
                     before_new_champion, champion_and_newest, receiver.texts, inbox.texts())
    finally:
        receiver.close()
        smtp.stop()
        scheduler.stop()
        server.stop()


def ran(run: Run) -> list[str]:
    """The tasks a run started, e.g. ["ScoreMonth", "ScoreVersion"]."""
    return re.findall(r" running +(\w+)\(", run.output)


def test_every_run_succeeded_and_scored_only_what_it_had_to(scored):
    for name, run in scored.runs.items():
        assert run.returncode == 0, f"{name}:\n{run.output[-3000:]}"
    assert ran(scored.runs["first"]) == ["ScoreMonth", "ScoreVersion", "ScoreMonth"]  # February: cleaned by training
    assert ran(scored.runs["another-process"]) == ["ScoreMonth", "ScoreVersion", "ScoreMonth"]
    assert "ScoreVersion(color=green, year=2021, month=2, model_version=2)" in scored.runs["new-champion"].output


def test_the_predictions_are_the_pyfunc_s_own_for_every_cleaned_trip(scored):
    """Against the model loaded here from the registry and the cleaned month read here, row for row."""
    cleaned = scored.cleaned("2021-02")
    predicted = pd.read_parquet(scored.scores("2021-02", 1, layout.PREDICTIONS))
    assert list(predicted.columns) == PREDICTED_COLUMNS and len(predicted) == len(cleaned) > 7000
    expected = scored.pyfunc(1).predict(raw_rows(cleaned))
    np.testing.assert_array_equal(predicted["predicted_duration"].to_numpy(), expected.astype(np.float64))
    for column in ("PULocationID", "DOLocationID", "trip_distance", "pickup_datetime"):
        assert predicted[column].tolist() == cleaned[column].tolist(), column
    np.testing.assert_array_equal(predicted["actual_duration"].to_numpy(), cleaned["duration"].to_numpy())
    np.testing.assert_array_equal(predicted["diff"].to_numpy(), cleaned["duration"].to_numpy() - expected)
    version = scored.client().get_model_version(MODEL, "1")
    assert set(zip(predicted["model_name"], predicted["model_version"], predicted["model_run_id"])) == {
        (MODEL, 1, version.run_id)}
    assert predicted["ride_id"].str.fullmatch(r"[0-9a-f]{32}").all() and predicted["ride_id"].is_unique


def test_live_error_is_beside_the_predictions_and_on_a_scoring_run_linked_to_the_version(scored):
    """RMSE and MAE recomputed here from the pyfunc's predictions, the RMSE the version was registered with from its
    pyfunc on February's gate rows; MLflow has the scoring run, tagged with the version, its metrics linked to the
    model."""
    cleaned = scored.cleaned("2021-02")
    errors = cleaned["duration"].to_numpy() - scored.pyfunc(1).predict(raw_rows(cleaned)).astype(np.float64)
    live = json.loads(scored.scores("2021-02", 1, layout.LIVE).read_text())
    assert live["rmse"] == pytest.approx(np.sqrt(np.mean(errors ** 2)), rel=1e-12)
    assert live["mae"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-12)
    assert (live["rows"], live["model_version"], live["month"], live["alert"]) == (len(cleaned), 1, "2021-02", False)
    assert live["registered_rmse"] == pytest.approx(scored.gate_rmse(1, "2021-02"), rel=1e-6)
    assert live["model_train_month"] == "2021-01"
    client = scored.client()
    run = client.get_run(live["scoring_run_id"])
    version = client.get_model_version(MODEL, "1")
    assert run.info.run_name == "scoring green 2021-02" and run.info.status == "FINISHED"
    assert {key: run.data.tags[key] for key in ("taxi.stage", "taxi.model_name", "taxi.model_version",
                                               "taxi.model_run_id", "score.month")} == {
        "taxi.stage": "scoring", "taxi.model_name": MODEL, "taxi.model_version": "1",
        "taxi.model_run_id": version.run_id, "score.month": "2021-02"}
    assert run.data.metrics["live_rmse"] == pytest.approx(live["rmse"]) and run.data.metrics["rows"] == len(cleaned)
    logged_model = version.source.removeprefix("models:/")  # what the registered version's source names
    linked = {(metric.key, metric.run_id) for metric in client.get_logged_model(logged_model).metrics}
    assert {("live_rmse", run.info.run_id), ("live_mae", run.info.run_id)} <= linked


def test_luigid_links_the_scoring_tasks_to_the_scoring_run(scored):
    first = json.loads(scored.first_bytes[layout.LIVE])
    experiment = scored.client().get_run(first["scoring_run_id"]).info.experiment_id
    query = {"data": json.dumps({"status": "DONE"})}
    tasks = requests.get(f"{scored.luigid.url}/api/task_list", params=query, timeout=10).json()["response"]
    urls = {task["name"]: task["tracking_url"] for task in tasks.values() if task["name"].startswith("Score")}
    run_page = f"{scored.mlflow.url}/#/experiments/{experiment}/runs/{first['scoring_run_id']}"
    assert urls == {"ScoreMonth": run_page, "ScoreVersion": run_page}


def test_scoring_uses_the_champion_even_when_a_newer_version_is_not_champion(scored):
    """January was scored while v2, registered after v1, was not champion: with v1, the champion."""
    assert scored.champion_and_newest == (1, 2)
    run = scored.runs["newest-not-champion"]
    assert "running   ScoreVersion(color=green, year=2021, month=1, model_version=1)" in run.output
    assert not scored.scores("2021-01", 2, layout.LIVE).parent.exists()
    predicted = pd.read_parquet(scored.scores("2021-01", 1, layout.PREDICTIONS))
    np.testing.assert_array_equal(predicted["predicted_duration"].to_numpy(),
                                  scored.pyfunc(1).predict(raw_rows(scored.cleaned("2021-01"))).astype(np.float64))


def test_a_rerun_is_a_no_op(scored):
    rerun = scored.runs["rerun"]
    assert ran(rerun) == [] and "1 complete ones were encountered:\n    - 1 ScoreMonth(" in rerun.output


def test_ride_ids_and_predictions_are_the_same_in_another_process(scored):
    """February's files deleted and scored again by a new process: the same bytes. The ids computed here, in a
    third process with its own hash seed, from the cleaned rows, are the file's."""
    assert scored.rescored_bytes == scored.first_bytes[layout.PREDICTIONS]
    ids = scoring.ride_ids(scored.cleaned("2021-02"), "green", "2021-02")
    assert ids.to_pylist() == pq.read_table(scored.scores("2021-02", 1, layout.PREDICTIONS))["ride_id"].to_pylist()
    elsewhere = scoring.ride_ids(scored.cleaned("2021-02"), "green", "2021-03").to_pylist()
    assert set(elsewhere).isdisjoint(ids.to_pylist())  # the same trips in another month are other rides


def test_a_new_champion_scores_a_second_file_and_leaves_the_first_intact(scored):
    """v2 (trained on 2023-01, made champion by hand) scores February beside v1's file, which keeps its bytes; its
    predictions are v2's own, its ride ids the same trips' ids."""
    for name, content in scored.before_new_champion.items():
        assert scored.scores("2021-02", 1, name).read_bytes() == content
    first, second = (pd.read_parquet(scored.scores("2021-02", v, layout.PREDICTIONS)) for v in (1, 2))
    cleaned = scored.cleaned("2021-02")
    np.testing.assert_array_equal(second["predicted_duration"].to_numpy(),
                                  scored.pyfunc(2).predict(raw_rows(cleaned)).astype(np.float64))
    assert not np.array_equal(first["predicted_duration"], second["predicted_duration"])
    assert second["ride_id"].tolist() == first["ride_id"].tolist() and set(second["model_version"]) == {2}
    assert json.loads(scored.scores("2021-02", 2, layout.LIVE).read_text())["model_version"] == 2


def test_a_month_worse_than_the_registered_rmse_alerts_by_webhook_and_mail(scored):
    """The shifted March is much worse than v1's registered RMSE: one webhook text and one mail name the month, the
    version and both RMSEs (the live one recomputed here, the registered one registration.json's gate RMSE, which
    tests/integration/test_registry.py re-scores); February, as good as registered, alerted nobody."""
    cleaned = scored.cleaned("2021-03")
    live_rmse = float(np.sqrt(np.mean((cleaned["duration"] - scored.pyfunc(1).predict(raw_rows(cleaned))) ** 2)))
    registered = json.loads(run_file(scored.store, layout.REGISTRATION).read_text())["gate_rmse"]
    assert live_rmse > 1.2 * registered
    alerts = [text for text in scored.webhook if text.startswith(f"taxi: live error alert: {MODEL} v1 ")]
    assert len(alerts) == 1 and alerts[0].startswith(f"taxi: live error alert: {MODEL} v1 on green 2021-03: ")
    assert f"live RMSE {live_rmse:.4f} min" in alerts[0]
    assert f"the {registered:.4f} min it was registered with" in alerts[0]
    [(subject, body)] = [mail for mail in scored.mails if f"live error alert for {MODEL} v1 " in mail[0]]
    assert subject == f"taxi: live error alert for {MODEL} v1 on green 2021-03"
    assert body.strip() == alerts[0]
    assert json.loads(scored.scores("2021-03", 1, layout.LIVE).read_text())["alert"] is True


def test_status_lists_the_scored_months_and_flags_the_alert(scored):
    """One row per live.json in the store, by month and version; the shifted March is flagged."""
    shown = subprocess.run([str(ROOT / "scripts" / "status"), "green"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "LUIGI_CONFIG_PATH": str(scored.config)})
    assert shown.returncode == 0, shown.stderr[-3000:]
    section = shown.stdout.split(f"{MODEL} scored months (store {scored.store})\n", 1)[1].split("\n\n")[0]
    lines = section.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["month", "scored with", "live RMSE", "registered RMSE", "alert", "trips",
                                            "predictions"]
    records = sorted((json.loads(path.read_text()) for path in scored.store.glob("scores/green/*/*/live.json")),
                     key=lambda live: (live["month"], live["model_version"]))
    assert [re.split(r"\s{2,}", line) for line in lines[1:len(records) + 1]] == [
        [live["month"], f"v{live['model_version']}", f"{live['rmse']:.4f}",
         "-" if live["registered_rmse"] is None else f"{live['registered_rmse']:.4f}",
         "ALERT" if live["alert"] else "-", f"{live['rows']:,}",
         str(scored.scores(live["month"], live["model_version"], layout.PREDICTIONS))] for live in records]
    assert {(live["month"], live["model_version"]) for live in records if live["alert"]} >= {("2021-03", 1)}
    assert {(live["month"], live["model_version"]) for live in records if not live["alert"]} >= {("2021-02", 1)}
    assert lines[len(records) + 1].startswith("ALERT: the live RMSE is more than")


# ---------------------------------------------------------------------------------------------------------------
# A kill during the write, and bad inputs


def test_kill_9_while_the_predictions_are_written_leaves_no_file_and_the_rerun_completes(scored, tlc_dir):
    """A 2 M-row April (real February trips resampled) takes long enough to write that the kill lands while the
    predictions' temporary file is there: nothing at the target paths; the rerun scores every cleaned trip."""
    mirror = scored.workdir / "mirror"
    table = synthetic.make_month(synthetic.read_sources([str(tlc_dir / "green_tripdata_2021-02.parquet")]),
                                 2_000_000, "green", 2021, 4, seed=4)
    synthetic.write_month(table, str(mirror / "green_tripdata_2021-04.parquet"))
    april = ("--year", "2021", "--month", "4")
    champion = int(scored.client().get_model_version_by_alias(MODEL, "champion").version)
    target = scored.scores("2021-04", champion, layout.PREDICTIONS)
    run = LuigiProcess(scored.workdir, scored.config, "ScoreMonth", *april, name="kill-in-scoring")
    run.wait_until(lambda: any(target.parent.glob(f"{target.name}-luigi-tmp-*")), "the predictions' temporary file")
    run.kill()
    assert [path.name for path in target.parent.iterdir() if "-luigi-tmp-" not in path.name] == []
    rerun = run_luigi(scored.workdir, scored.config, "ScoreMonth", *april)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = pq.read_metadata(one_file(scored.store, layout.CLEAN, color="green", ym="2021-04")).num_rows
    assert pq.read_metadata(target).num_rows == rows > 1_900_000
    assert json.loads(scored.scores("2021-04", champion, layout.LIVE).read_text())["rows"] == rows
    client = scored.client()
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    runs = client.search_runs([experiment], "tags.`score.month` = '2021-04'")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]  # the killed attempt's, ended


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("ERROR: taxi.")]


def test_without_a_champion_scoring_fails_saying_to_train_first(tmp_path, sampled_tlc):
    """A registry with no model: one line naming the model and the registry says to train first; nothing is
    downloaded or written."""
    database = tmp_path / "mlflow.db"
    config = write_config(tmp_path / "empty.cfg", {
        "taxi": {"source": str(sampled_tlc), "store": str(tmp_path / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{database}"}, "core": private_lock(tmp_path)})
    done = run_luigi(tmp_path, config, "ScoreMonth", *FEBRUARY)
    assert done.returncode == 30
    assert error_lines(done.stderr) == [
        f"ERROR: taxi.tasks: ScoreMonth(color=green, year=2021, month=2) failed: NoChampion: {MODEL} has no champion "
        f"in the registry at sqlite:///{database}: train and register a green month first (luigi --module "
        f"taxi.tasks RegisterModel --color green --year YYYY --month M, or scripts/backfill)"]
    assert not (tmp_path / "store").exists()


def test_a_version_the_registry_lacks_fails_naming_it(scored, tmp_path):
    done = run_luigi(scored.workdir, scored.config, "ScoreVersion", *FEBRUARY, "--model-version", "9")
    assert done.returncode == 30
    assert error_lines(done.stderr) == [
        f"ERROR: taxi.tasks: ScoreVersion(color=green, year=2021, month=2, model_version=9) failed: UnknownVersion: "
        f"{MODEL} has no version 9 in the registry at {scored.mlflow.url}: score with the champion (ScoreMonth) or a "
        f"version the registry lists"]
    assert not scored.scores("2021-02", 9, layout.LIVE).parent.exists()


def score(config: Path, *args: str) -> subprocess.CompletedProcess:
    """scripts/score as an operator runs it."""
    return subprocess.run([str(ROOT / "scripts" / "score"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})


def test_a_month_not_published_is_missing_data_not_a_failure(scored):
    """scripts/score for a month the mirror lacks: Luigi's missing data (exit 20), nothing failed or written; with no
    month given and none published among the newest, one line says so (exit 20)."""
    done = score(scored.config, "green", "2021-05")
    assert done.returncode == 20, done.stderr[-3000:]
    assert "were missing external dependencies:\n        - 1 SourceFile(color=green, year=2021, month=5)" in \
        done.stderr
    assert "failed" not in done.stderr.split("===== Luigi Execution Summary =====")[1]
    assert not scored.scores("2021-05", 1, layout.LIVE).parent.parent.exists()
    newest = score(scored.config, "green", "--as-of", "2020-06-15")
    assert newest.returncode == 20
    assert error_lines(newest.stderr) == [
        f"ERROR: taxi.monthly: no green month published at {scored.workdir / 'mirror'} among the 12 newest candidates "
        f"as of 2020-06-15"]


def test_scoring_the_newest_published_month_scores_it_with_the_champion(scored):
    """What the timer runs: as of 2021-04-21 the newest month in the mirror is the shifted March."""
    done = score(scored.config, "green", "--as-of", "2021-04-21")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "newest published green month as of 2021-04-21: 2021-03" in done.stderr
    champion = int(scored.client().get_model_version_by_alias(MODEL, "champion").version)
    assert json.loads(scored.scores("2021-03", champion, layout.LIVE).read_text())["model_version"] == champion


def test_a_store_that_refuses_writes_fails_naming_the_target_and_leaves_nothing(scored, tmp_path):
    """A read-only store (a tmpfs remounted read-only: root ignores file modes) holding the cleaned month and the
    record of the registry it serves: the scoring fails with one line naming the target, writes nothing, and its
    MLflow run ends FAILED."""
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(store)], check=True)
    try:
        shutil.copytree(scored.store / "clean", store / "clean")
        shutil.copyfile(scored.store / layout.REGISTRY_RECORD, store / layout.REGISTRY_RECORD)
        subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        before = {run.info.run_id for run in february_scorings(scored)}
        config = write_config(tmp_path / "ro.cfg", {"taxi": {"source": str(scored.workdir / "mirror"),
                                                             "store": str(store)},
                                                    "mlflow": {"tracking_uri": scored.mlflow.url},
                                                    "core": private_lock(tmp_path)})
        done = run_luigi(tmp_path, config, "ScoreVersion", *FEBRUARY, "--model-version", "1")
        left = [path for path in store.rglob("*")
                if path.is_file() and "clean" not in path.parts and path.name != layout.REGISTRY_RECORD]
    finally:
        subprocess.run(["umount", str(store)], check=True)
    target = store / layout.scores("green", 2021, 2, 1)[layout.PREDICTIONS]
    assert done.returncode == 30
    assert error_lines(done.stderr) == [
        f"ERROR: taxi.tasks: ScoreVersion(color=green, year=2021, month=2, model_version=1) failed: OSError: "
        f"[Errno 30] cannot write {target} into [taxi] store {store}: Read-only file system"]
    assert left == []
    [attempt] = [run for run in february_scorings(scored) if run.info.run_id not in before]
    assert attempt.info.status == "FAILED"


def february_scorings(scored) -> list:
    """Every scoring run of green 2021-02 in the shared registry."""
    client = scored.client()
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    return client.search_runs([experiment], "tags.`taxi.stage` = 'scoring' and tags.`score.month` = '2021-02'")


# ---------------------------------------------------------------------------------------------------------------
# The functions scoring is made of


def test_distinct_rows_give_back_every_row_and_keep_float_bits_apart():
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"PULocationID": rng.choice(["1", "2", "43"], 5000),
                          "DOLocationID": rng.choice(["151", "7"], 5000),
                          "trip_distance": rng.choice([0.0, -0.0, 1.5, np.nan, 2.25], 5000)})
    first, inverse = scoring.distinct_rows(frame, ("PULocationID", "DOLocationID", "trip_distance"))
    rebuilt = frame.iloc[first].iloc[inverse].reset_index(drop=True)
    assert rebuilt["PULocationID"].tolist() == frame["PULocationID"].tolist()
    assert rebuilt["DOLocationID"].tolist() == frame["DOLocationID"].tolist()
    np.testing.assert_array_equal(rebuilt["trip_distance"].to_numpy().view(np.int64),
                                  frame["trip_distance"].to_numpy().view(np.int64))
    assert len(first) == len(frame.assign(bits=frame["trip_distance"].to_numpy().view(np.int64)).drop_duplicates(
        ["PULocationID", "DOLocationID", "bits"])) == 3 * 2 * 5
    assert (np.diff(first) > 0).all() and (inverse[first] == np.arange(len(first))).all()


@pytest.mark.parametrize("live,registered,share,expected", [
    (7.6, 6.4, 0.2, False), (7.7, 6.4, 0.2, True), (6.0, 6.4, 0.0, False), (6.5, 6.4, 0.0, True),
    (99.0, None, 0.2, False)])
def test_an_alert_is_a_live_rmse_more_than_the_share_above_the_registered_one(live, registered, share, expected):
    assert scoring.is_alert(live, registered, share) is expected


def test_a_version_registered_without_an_rmse_scores_without_an_alert(scored):
    """A version registered by hand (no RMSE recorded) scores the shifted month: no alert, nothing to compare."""
    client = scored.client()
    v1 = client.get_model_version(MODEL, "1")
    manual = client.create_model_version(MODEL, v1.source, run_id=v1.run_id,
                                         model_id=v1.source.removeprefix("models:/"))
    done = run_luigi(scored.workdir, scored.config, "ScoreVersion", "--year", "2021", "--month", "3",
                     "--model-version", manual.version)
    assert done.returncode == 0, done.stderr[-3000:]
    live = json.loads(scored.scores("2021-03", int(manual.version), layout.LIVE).read_text())
    assert (live["registered_rmse"], live["alert"]) == (None, False) and live["rmse"] > 10
    assert "the version has no registered RMSE to compare with" in done.stderr


def test_a_version_trained_on_another_color_does_not_score(scored):
    """A version of the green model whose training run says yellow trips (registered by hand) is refused by name."""
    client = scored.client()
    v1 = client.get_model_version(MODEL, "1")
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    yellow = client.create_run(experiment, tags={"color": "yellow"}).info.run_id
    client.set_terminated(yellow)
    wrong = client.create_model_version(MODEL, v1.source, run_id=yellow, model_id=v1.source.removeprefix("models:/"))
    done = run_luigi(scored.workdir, scored.config, "ScoreVersion", *FEBRUARY, "--model-version", wrong.version)
    assert done.returncode == 30
    assert error_lines(done.stderr) == [
        f"ERROR: taxi.tasks: ScoreVersion(color=green, year=2021, month=2, model_version={wrong.version}) failed: "
        f"ValueError: {MODEL} v{wrong.version} was trained on yellow trips, not green ones: it cannot score green "
        f"months"]
    assert not scored.scores("2021-02", int(wrong.version), layout.LIVE).parent.exists()


def test_the_alert_share_a_scoring_is_given_is_the_one_applied(scored):
    """With --alert-share 50, June (shifted like March: worse than v1's registered RMSE, recomputed here, by more
    than the default share) does not alert; its live.json records the share it was scored with."""
    shifted_month(scored.workdir / "mirror" / "green_tripdata_2021-02.parquet",
                  scored.workdir / "mirror" / "green_tripdata_2021-06.parquet", month=6)
    done = run_luigi(scored.workdir, scored.config, "ScoreVersion", "--year", "2021", "--month", "6",
                     "--model-version", "1", "--alert-share", "50")
    assert done.returncode == 0, done.stderr[-3000:]
    cleaned = scored.cleaned("2021-06")
    live_rmse = float(np.sqrt(np.mean((cleaned["duration"] - scored.pyfunc(1).predict(raw_rows(cleaned))) ** 2)))
    assert live_rmse > (1 + ALERT_SHARE) * scored.gate_rmse(1, "2021-02")  # the default share would alert
    live = json.loads(scored.scores("2021-06", 1, layout.LIVE).read_text())
    assert (live["alert"], live["alert_share"]) == (False, 50)
    assert "live error alert" not in done.stderr


def test_a_month_scored_with_another_registry_s_version_is_not_done_for_this_one(scored, tmp_path):
    """February was scored with v1 of the tracking server. Against another registry (empty), ScoreVersion v1 of the
    same store is not complete: it runs, fails since the store serves the server, and leaves the files as they were."""
    folder = scored.scores("2021-02", 1, layout.LIVE).parent
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    database = tmp_path / "other.db"
    config = write_config(tmp_path / "other.cfg", {"taxi": {"source": str(scored.workdir / "mirror"),
                                                            "store": str(scored.store)},
                                                   "mlflow": {"tracking_uri": f"sqlite:///{database}"},
                                                   "core": private_lock(tmp_path)})
    done = run_luigi(tmp_path, config, "ScoreVersion", *FEBRUARY, "--model-version", "1")
    assert done.returncode == 30, done.stderr[-3000:]
    assert f"OtherRegistry: the store {scored.store} serves the registry at {scored.mlflow.url}" in done.stderr
    assert f"but this is the registry at sqlite:///{database} (no experiment taxi-duration there)" in done.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
