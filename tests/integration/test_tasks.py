"""Each task in isolation, run by Luigi against temporary targets, on real TLC rows."""

import json
import os

import luigi
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.course import course_features, course_read_dataframe
from taxi import config, data, features, metrics, serving, storage, tasks, tracking, training
from taxi.config import TaxiConfig


def build(task) -> luigi.execution_summary.LuigiRunResult:
    result = luigi.build([task], local_scheduler=True, detailed_summary=True, workers=1)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return result


def test_download_month_copies_the_bytes_and_records_lineage(luigi_config, tlc_dir):
    task = tasks.DownloadMonth(year=2021, month=2)
    build(task)
    out = task.output()
    source = tlc_dir / "green_tripdata_2021-02.parquet"
    assert open(out["data"].path, "rb").read() == source.read_bytes()
    meta = json.loads(open(out["meta"].path).read())
    assert meta["sha256"] == data.sha256(str(source)) and meta["rows"] == 64_572
    assert meta["source_url"] == str(source)


def test_download_month_over_http(luigi_config, tlc_http, tlc_dir):
    luigi.configuration.get_config().set("taxi", "source", tlc_http)
    task = tasks.DownloadMonth(year=2023, month=2)
    build(task)
    assert open(task.output()["data"].path, "rb").read() == (tlc_dir / "green_tripdata_2023-02.parquet").read_bytes()


def test_download_month_404_fails_at_once_and_leaves_nothing(luigi_config, tlc_http, caplog):
    luigi.configuration.get_config().set("taxi", "source", tlc_http)
    task = tasks.DownloadMonth(year=2020, month=5)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == luigi.execution_summary.LuigiStatusCode.FAILED
    assert f"HTTP 404 for {tlc_http}/green_tripdata_2020-05.parquet: the month is not published" in caplog.text
    assert "download of" not in caplog.text  # no retry was attempted
    assert not task.output()["data"].exists() and not task.output()["meta"].exists()


def test_clean_month_writes_the_course_rows_with_pu_do_and_pickup_times(luigi_config, tlc_dir):
    task = tasks.CleanMonth(year=2021, month=1)
    build(task)
    cleaned = pd.read_parquet(task.output()["data"].path)
    course = course_read_dataframe(str(tlc_dir / "green_tripdata_2021-01.parquet")).reset_index(drop=True)
    assert len(cleaned) == 73_908
    assert cleaned["PU_DO"].tolist() == course["PU_DO"].tolist()
    assert cleaned[data.PICKUP].tolist() == course["lpep_pickup_datetime"].tolist()
    stats = json.loads(open(task.output()["stats"].path).read())
    assert (stats["rows_raw"], stats["rows_clean"]) == (76_518, 73_908)


def test_truncated_cached_parquet_is_not_complete_and_is_rebuilt(luigi_config):
    task = tasks.CleanMonth(year=2021, month=2)
    build(task)
    path = task.output()["data"].path
    whole = open(path, "rb").read()
    open(path, "wb").write(whole[: len(whole) // 3])
    assert not task.complete()
    build(task)
    assert open(path, "rb").read() == whole


def test_build_features_by_default_gives_the_clock_set_of_the_course_s_rows(luigi_config, tlc_dir):
    """The default feature set reaches BuildFeatures: each training trip's zone-pair and zone codes (positions among
    the month's sorted values), distance, pickup hour and weekday, computed here from the course's own rows."""
    task = tasks.BuildFeatures(year=2021, month=1)
    build(task)
    encoder, X_train, y_train, _, _ = tasks.load_features(task.output())
    train = course_read_dataframe(str(tlc_dir / "green_tripdata_2021-01.parquet"))
    expected = [np.searchsorted(np.sort(train[c].unique()), train[c]) for c in ("PU_DO", "PULocationID",
                                                                                 "DOLocationID")]
    expected += [train["trip_distance"], train["lpep_pickup_datetime"].dt.hour,
                 train["lpep_pickup_datetime"].dt.weekday]
    np.testing.assert_array_equal(X_train, np.column_stack(expected).astype(np.float32))
    np.testing.assert_array_equal(y_train, train["duration"].to_numpy())
    assert features.feature_types(encoder) == ["c", "c", "c", "q", "q", "q"]


def test_build_features_matches_dictvectorizer_on_the_selection_rows(luigi_config, tlc_dir):
    """The course's matrices, the validation month's restricted to its selection rows (the gate rows are left out)."""
    task = tasks.BuildFeatures(year=2021, month=1, feature_set="course")
    build(task)
    vectorizer, X_train, y_train, X_valid, y_valid = tasks.load_features(task.output())
    train = course_read_dataframe(str(tlc_dir / "green_tripdata_2021-01.parquet"))
    valid = course_read_dataframe(str(tlc_dir / "green_tripdata_2021-02.parquet"))
    course_dv, course_train, course_valid = course_features(train, valid)
    selection = ~data.gate_rows(pd.read_parquet(task.input()["valid"]["data"].path), task.gate_share)
    assert 0.45 < selection.mean() < 0.55
    assert vectorizer.feature_names_ == course_dv.feature_names_
    assert (X_train != course_train).nnz == 0 and (X_valid != course_valid[selection]).nnz == 0
    np.testing.assert_array_equal(y_valid, valid["duration"].to_numpy()[selection])


def test_tune_hyperparams_logs_each_trial_and_is_deterministic(luigi_config, tmp_path):
    task = tasks.TuneHyperparams(year=2021, month=1)
    build(task)
    best = storage.read_json(task.output())
    assert best["trials"] == 2 and set(best["params"]) == {"grow_policy", "max_depth", "max_leaves", "learning_rate",
                                                            "reg_alpha", "reg_lambda", "min_child_weight"}
    mlflow.set_tracking_uri(luigi_config["mlflow"]["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["taxi-duration"], output_format="list")
    parent = [r for r in runs if r.data.tags.get("taxi.stage") == "tuning"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(trials) == 2
    # the best trial retrained here for its best rounds (a green month fits the trial samples whole) scores the
    # recorded RMSE on the selection rows, and it is the lowest of the trials MLflow holds
    encoder, X_train, y_train, X_valid, y_valid = tasks.load_features(task.input())
    booster = training.train_booster(X_train, y_train, best["params"], best["num_boost_round"], best["seed"],
                                     TaxiConfig().nthread, features.feature_types(encoder))
    assert metrics.rmse(y_valid, booster.inplace_predict(X_valid)) == pytest.approx(best["val_rmse"], rel=1e-5)
    assert min(r.data.metrics["val_rmse"] for r in trials) == pytest.approx(best["val_rmse"])
    assert all("max_depth" in r.data.params for r in trials)
    # same seed, same settings: a fresh store gives the same answer
    luigi.configuration.get_config().set("taxi", "store", str(tmp_path / "store2"))
    again = tasks.TuneHyperparams(year=2021, month=1)
    build(again)
    assert storage.read_json(again.output())["params"] == best["params"]


def test_changed_tuning_settings_never_reuse_a_model(luigi_config):
    task = tasks.TrainModel(year=2021, month=1)
    before = task.output()["booster"].path, task.requires()["features"].output()["train"].path
    luigi.configuration.get_config().set("TuneHyperparams", "seed", "7")
    after = task.output()["booster"].path, task.requires()["features"].output()["train"].path
    assert before[0] != after[0]  # new tuning settings: a new model path
    assert before[1] == after[1]  # the features do not depend on them


def test_train_and_register_records_lineage_and_the_report_and_rebuilds_a_deleted_input(luigi_config, tlc_dir):
    first = tasks.RegisterModel(year=2021, month=1)
    build(first)
    reg = storage.read_json(first.output()["registration.json"])
    assert reg["decision"] == "champion" and reg["version"] == 1 and reg["previous_champion_version"] is None
    trained = storage.read_json(first.requires()["model"].output()["run"])
    mlflow.set_tracking_uri(luigi_config["mlflow"]["tracking_uri"])
    run = mlflow.get_run(trained["run_id"])
    # the stored booster re-scored here on the stored validation matrix
    _, _, _, X_valid, y_valid = tasks.load_features(first.input()["features"])
    booster = storage.read(first.input()["model"]["booster"], serving.load_booster)
    rmse = metrics.rmse(y_valid, booster.inplace_predict(X_valid))
    assert reg["val_rmse"] == pytest.approx(rmse) and run.data.metrics["val_rmse"] == pytest.approx(rmse)
    assert run.data.tags["train.rows_clean"] == "73908" and run.data.tags["valid.rows_raw"] == "64572"
    assert run.data.tags["train.sha256"] == data.sha256(str(tlc_dir / "green_tripdata_2021-01.parquet"))
    artifacts = {a.path for a in MlflowClient().list_artifacts(trained["run_id"], "report")}
    assert artifacts == {f"report/{name}" for name in ("report.md", "predicted_vs_actual.png", "residuals.png",
                                                      "feature_importance.png", "tuning.png", "drift.png")}
    report = open(first.output()["report.md"].path).read()
    assert "v1: champion" in report and "| 2021-01 |" in report and f"{reg['gate_rmse']:.4f}" in report
    assert open(first.output()["residuals.png"].path, "rb").read(4) == b"\x89PNG"

    # a report input deleted after training is rebuilt; the model is neither retrained nor registered again
    os.remove(first.requires()["features"].output()["valid"].path)
    os.remove(first.output()["registration.json"].path)
    ran = build(first).summary_text.split("ran successfully:")[1].split("\n\n")[0]
    assert "BuildFeatures(" in ran and "RegisterModel(" in ran and "TrainModel(" not in ran
    assert storage.read_json(first.output()["registration.json"])["version"] == 1


def test_training_rerun_marks_what_a_killed_attempt_left_in_mlflow_killed(luigi_config, sampled_tlc):
    """A kill between logging the training run and writing TrainModel's target leaves a FINISHED run that nothing
    uses (a kill earlier, a RUNNING one): the rerun marks both KILLED. A registered run of the task and another
    task's runs are left alone."""
    luigi.configuration.get_config().set("taxi", "source", str(sampled_tlc))
    task = tasks.TrainModel(year=2021, month=1)
    build(task.requires()["params"])
    client = MlflowClient(luigi_config["mlflow"]["tracking_uri"])
    settings = config.MlflowConfig()
    tracking.connect(settings.uri, settings.experiment, settings.artifact_root)
    experiment = mlflow.get_experiment_by_name("taxi-duration").experiment_id

    def leave_run(task_id: str, finished: bool) -> str:
        run = client.create_run(experiment, tags={"taxi.task_id": task_id})
        if finished:
            client.set_terminated(run.info.run_id)
        return run.info.run_id

    orphan, open_run, registered = (leave_run(task.task_id, finished) for finished in (True, False, True))
    client.create_registered_model("kept")
    client.create_model_version("kept", f"runs:/{registered}/model", run_id=registered)
    others = [leave_run("TrainModel_green_1_2023_0000000000", finished) for finished in (True, False)]
    build(task)
    status = {run_id: client.get_run(run_id).info.status for run_id in (orphan, open_run, registered, *others)}
    assert status == {orphan: "KILLED", open_run: "KILLED", registered: "FINISHED", others[0]: "FINISHED",
                      others[1]: "RUNNING"}
    trained = storage.read_json(task.output()["run"])
    assert client.get_run(trained["run_id"]).info.status == "FINISHED"


def test_a_finished_month_runs_again_after_an_upstream_change_and_not_after_an_unrelated_one(luigi_config,
                                                                                            sampled_tlc, monkeypatch):
    """gokart's cache key: bumping the features version, or changing the gate share or a data check's setting, gives
    the month's features, tuning and model new paths (so they run again); threads, retries and the decision's thresholds do not."""
    config = luigi.configuration.get_config()
    config.set("taxi", "source", str(sampled_tlc))
    build(tasks.RegisterModel(year=2021, month=1))

    def done() -> dict[str, bool]:
        return {family: getattr(tasks, family)(year=2021, month=1).complete()
                for family in ("CleanMonth", "BuildFeatures", "TuneHyperparams", "RegisterModel")}

    assert all(done().values())
    for section, key, value in (("taxi", "threads", "1"), ("taxi", "download_retries", "1"),
                                ("RegisterModel", "min_improvement", "0.2")):
        config.set(section, key, value)
        assert all(done().values()), (section, key)
        config.remove_option(section, key)
    for section, key, value, still_done in (("BuildFeatures", "gate_share", "0.4", {"CleanMonth"}),
                                            ("CleanMonth", "max_distance", "90", set())):
        config.set(section, key, value)
        assert {family for family, complete in done().items() if complete} == still_done, (section, key)
        config.remove_option(section, key)
    assert all(done().values())
    for task in (tasks.CleanMonth, tasks.BuildFeatures):
        monkeypatch.setattr(task, "version", "v-bumped")
    assert not any(done().values())
