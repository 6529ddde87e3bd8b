"""Synthetic months and the benchmark, on sizes small enough for CI (no timing assertions)."""

import json
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from bench import synthetic
from taxi import data, layout
from taxi.registry import model_name
from tests.support.paths import ROOT
from tests.support.store import one_file, run_file

STAGES = {"read", "clean", "features", "read+clean+features", "train", "predict"}


@pytest.fixture(scope="module")
def source(tlc_dir):
    return synthetic.read_sources([str(tlc_dir / "green_tripdata_2021-01.parquet"),
                                   str(tlc_dir / "green_tripdata_2023-02.parquet")])


def test_synthetic_month_is_deterministic_and_named_for_its_color(source):
    month = synthetic.make_month(source, 5_000, "yellow", 2024, 2, seed=7)
    assert month.equals(synthetic.make_month(source, 5_000, "yellow", 2024, 2, seed=7))
    assert not month.equals(synthetic.make_month(source, 5_000, "yellow", 2024, 2, seed=8))
    assert month.num_rows == 5_000
    assert set(data.required_columns("yellow")) <= set(month.column_names)
    assert "airport_fee" in month.column_names and "ehail_fee" not in month.column_names


def test_synthetic_trips_start_in_the_target_month_and_keep_their_durations(source):
    month = synthetic.make_month(source, 20_000, "green", 2021, 2, seed=1)
    pickup = month["lpep_pickup_datetime"].to_numpy()
    assert pickup.min() >= np.datetime64("2021-02-01") and pickup.max() < np.datetime64("2021-03-01")
    picks = np.random.default_rng(1).integers(0, source.num_rows, size=20_000)
    original = (pc.subtract(source["dropoff_datetime"], source["pickup_datetime"]).to_numpy())[picks]
    np.testing.assert_array_equal(month["lpep_dropoff_datetime"].to_numpy() - pickup, original)


def test_synthetic_cli_writes_a_parquet_the_pipeline_reads(tmp_path, tlc_dir):
    out = tmp_path / "yellow_tripdata_2021-03.parquet"
    subprocess.run([str(ROOT / "scripts" / "make_synthetic_month"), "--color", "yellow", "--year", "2021",
                    "--month", "3", "--rows", "1000", "--source", str(tlc_dir / "green_tripdata_2021-01.parquet"),
                    str(out)], check=True, capture_output=True, timeout=120)
    assert data.check_raw(str(out), "yellow", "synthetic month") == 1000
    cleaned, _ = data.clean_trips(data.read_trips(out, "yellow"), "yellow")
    assert len(cleaned) > 900


@pytest.mark.parametrize("options,checks", [
    ([], {"clean_rows", "feature_names", "feature_matrices", "predictions", "rmse"}),
    (["--skip-training"], {"clean_rows", "feature_names", "feature_matrices"}),
])
def test_bench_finds_the_pipeline_identical_to_the_course(tlc_dir, options, checks):
    result = subprocess.run([str(ROOT / "scripts" / "bench"), "--rows", "20000", "--rounds", "5",
                             "--source-dir", str(tlc_dir), *options], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 20_000
    assert summary["identical"] is True and set(summary["checks"]) == checks, summary["checks"]
    stages = STAGES if "predictions" in checks else STAGES - {"train", "predict"}
    for side in ("course", "pipeline"):
        assert set(summary["seconds"][side]) == stages
    assert set(summary["speedup"]) >= stages
    assert summary["peak_rss_mb"]["read+clean+features"]["pipeline"] > 0


def test_bench_register_times_the_new_and_the_old_tuning_and_a_rerun_that_does_nothing(tlc_dir, tmp_path):
    """Each tuning runs on its own fresh store with its own settings; the JSON's figures are the new tuning's."""
    workdir = tmp_path / "run"
    result = subprocess.run([str(ROOT / "scripts" / "bench-register"), "--rows", "20000", "--max-evals", "2",
                             "--course-rounds", "5", "--source-dir", str(tlc_dir), "--data-dir", str(tmp_path),
                             "--workdir", str(workdir)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 20_000 and set(summary["sides"]) == {"new", "old"}
    for side, policy in (("new", "lossguide"), ("old", "depthwise")):
        store = workdir / f"{side}-0" / "store"
        registration = json.loads(run_file(store, layout.REGISTRATION).read_text())
        tuned = json.loads(one_file(store, layout.TUNING, color="green", ym="2021-01").read_text())
        figures = summary["sides"][side]
        assert figures["val_rmse"] == registration["val_rmse"] and registration["version"] == 1
        assert figures["trials"] == tuned["trials"] == 2 and tuned["params"]["grow_policy"] == policy
        assert 0 < figures["tune_seconds"] < figures["total_seconds"]
    assert {k: summary[k] for k in ("tune_seconds", "total_seconds", "val_rmse", "peak_rss_mb")} == {
        k: summary["sides"]["new"][k] for k in ("tune_seconds", "total_seconds", "val_rmse", "peak_rss_mb")}
    assert "ran successfully" in (workdir / "new-0" / "run.log").read_text()
    assert "ran successfully" not in (workdir / "new-0" / "rerun.log").read_text()
    assert 0 < summary["sides"]["new"]["rerun_seconds"] < summary["total_seconds"]
    assert 0 < summary["course_params_val_rmse"] < 60  # minutes, on the same matrices
    assert set(summary["goals"]) == {"complete rerun under 3 s", "validation RMSE better than the course params",
                                     "whole run at most 5 min", "validation RMSE no worse than the old tuning's"}
    assert "| validation RMSE | " in result.stdout and "new tuning | old tuning" in result.stdout


def test_bench_register_refuses_a_used_workdir(tmp_path):
    (tmp_path / "store").mkdir()
    result = subprocess.run([str(ROOT / "scripts" / "bench-register"), "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not empty: a finished run there would be reused" in result.stderr


def test_bench_score_reports_what_both_sides_wrote_and_the_model_predicts(tlc_dir, tmp_path):
    """scripts/bench-score on 20,000 rows: its row counts, distinct inputs and live RMSE recomputed here from the
    month it wrote; both sides' predictions are the registered pyfunc's own, loaded here, on the trips kept here."""
    workdir = tmp_path / "bench"
    result = subprocess.run([str(ROOT / "scripts" / "bench-score"), "--rows", "20000", "--rounds", "5",
                             "--source-dir", str(tlc_dir), "--workdir", str(workdir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    month = pd.read_parquet(workdir / "green_tripdata_2021-03.parquet")
    minutes = (month["lpep_dropoff_datetime"] - month["lpep_pickup_datetime"]).dt.total_seconds() / 60
    kept = month[(minutes >= 1) & (minutes <= 60)]
    actual = minutes[(minutes >= 1) & (minutes <= 60)].to_numpy()
    assert (summary["rows"], summary["scored_rows"]) == (len(month), len(kept)) and len(month) == 20_000
    inputs = kept[["PULocationID", "DOLocationID"]].assign(bits=kept["trip_distance"].to_numpy().view(np.int64))
    assert summary["distinct_model_inputs"] == len(inputs.drop_duplicates())
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    expected = mlflow.pyfunc.load_model(f"models:/{model_name('green')}/1").predict(
        kept[["PULocationID", "DOLocationID", "trip_distance"]]).astype(np.float64)
    for side in ("pipeline", "course"):
        written = pd.read_parquet(workdir / side / "predictions.parquet")
        np.testing.assert_array_equal(written["predicted_duration"].to_numpy(dtype=np.float64), expected)
        np.testing.assert_array_equal(written["actual_duration"].to_numpy(), actual)
    assert summary["identical"] is True and summary["checks"] == {"trips": True, "predictions": True}
    assert summary["live_rmse"] == pytest.approx(float(np.sqrt(np.mean((actual - expected) ** 2))), rel=1e-12)
    stages = {"read", "clean", "load model", "predict", "write"}
    assert set(summary["seconds"]["course"]) == set(summary["seconds"]["pipeline"]) == stages
    assert set(summary["goals"]) == {"rows/s >= 10x the course's", "pipeline peak RSS <= 1.5 GB"}
    assert "| rows/s | " in result.stdout
