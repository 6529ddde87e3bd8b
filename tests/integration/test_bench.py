"""Synthetic months and the benchmark, on sizes small enough for CI (no timing assertions)."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from bench import course
from taxi import data, features, layout, metrics
from taxi.registry import model_name
from tests.support.paths import ROOT
from tests.support.store import one_file, run_file, raw_rows

STAGES = {"read", "clean", "features", "read+clean+features", "train", "predict"}


# Linux hands a process its parent's peak RSS when it is started (vfork + exec), so the bench is started by this
# small launcher, whose children start afresh, and which writes the peak RSS (KiB) of the bench and every process
# it waited for, as the kernel reports it to wait4, to the file argv[1].
LAUNCHER = ("import os, subprocess, sys\n"
            "child = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(child.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_measured(argv: list[str], workdir) -> tuple[subprocess.CompletedProcess, float]:
    """`argv` run to its end; (the result, the peak RSS in MB of its process tree)."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, str(workdir / "peak"), *argv], capture_output=True,
                          text=True, timeout=300)
    return done, int((workdir / "peak").read_text()) / 1024


@pytest.fixture(scope="module")
def import_rss_mb() -> dict[str, float]:
    """For each side of the bench, the peak RSS in MB of a fresh process that only imports what that side imports
    (the high-water mark of its own memory, VmHWM, not the parent's a process inherits in ru_maxrss)."""
    imports = {"course": "import bench.speed",
               "pipeline": "import bench.speed\nfrom taxi import data, features, metrics, serving, training"}
    peak = "import re\nprint(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])"
    return {side: int(subprocess.run([sys.executable, "-c", f"{code}\n{peak}"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=120, check=True).stdout) / 1024
            for side, code in imports.items()}


@pytest.mark.parametrize("options,checks", [
    ([], {"clean_rows", "feature_names", "feature_matrices", "predictions", "rmse"}),
    (["--skip-training"], {"clean_rows", "feature_names", "feature_matrices"}),
])
def test_bench_finds_the_pipeline_identical_to_the_course(tlc_dir, tmp_path, options, checks, import_rss_mb):
    result, tree_peak_mb = run_measured(
        [str(ROOT / "scripts" / "bench"), "--rows", "20000", "--rounds", "5", "--source-dir", str(tlc_dir), *options],
        tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 20_000
    assert summary["identical"] is True and set(summary["checks"]) == checks, summary["checks"]
    stages = STAGES if "predictions" in checks else STAGES - {"train", "predict"}
    for side in ("course", "pipeline"):
        assert set(summary["seconds"][side]) == stages
    assert set(summary["speedup"]) >= stages
    # each side's peak, measured in its own process: at least what its imports take (measured here in a fresh
    # process), at most the peak of the bench's whole process tree (as the kernel reports it here)
    peaks = summary["peak_rss_mb"]
    for side in ("course", "pipeline"):
        side_peaks = (peaks["read+clean+features"][side], peaks["overall"][side])
        assert import_rss_mb[side] <= side_peaks[0] <= side_peaks[1] <= tree_peak_mb + 1, (peaks, import_rss_mb,
                                                                                           tree_peak_mb)


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
        X_valid, y_valid = features.load_matrix(str(one_file(store, layout.FEATURES, color="green", ym="2021-01",
                                                             name="valid.npz")))
        booster = xgb.Booster()
        booster.load_model(bytearray(run_file(store, "booster.ubj").read_bytes()))
        assert figures["val_rmse"] == pytest.approx(metrics.rmse(y_valid, booster.inplace_predict(X_valid)))
        assert figures["trials"] == tuned["trials"] == 2 and tuned["params"]["grow_policy"] == policy
    assert {k: summary[k] for k in ("tune_seconds", "total_seconds", "val_rmse", "peak_rss_mb")} == {
        k: summary["sides"]["new"][k] for k in ("tune_seconds", "total_seconds", "val_rmse", "peak_rss_mb")}
    assert "ran successfully" in (workdir / "new-0" / "run.log").read_text()
    assert "ran successfully" not in (workdir / "new-0" / "rerun.log").read_text()
    # the course's model trained here by the course's own code on the run's cleaned training month, scored on the
    # validation month's selection rows
    train, valid = (pd.read_parquet(one_file(workdir / "new-0" / "store", layout.CLEAN, color="green", ym=ym))
                    for ym in ("2021-01", "2021-02"))
    selection = valid[~data.gate_rows(valid, 0.5)]
    _, X_train, X_selection = course.course_features(train, selection)
    booster = course.course_train(X_train, train["duration"].to_numpy(), rounds=5)
    rmse = course.course_rmse(selection["duration"].to_numpy(), course.course_predict(booster, X_selection))
    assert summary["course_params_val_rmse"] == pytest.approx(rmse, rel=1e-4)
    new, old = summary["sides"]["new"], summary["sides"]["old"]
    assert summary["goals"] == {  # each verdict follows the figures
        "complete rerun under 3 s": new["rerun_seconds"] < 3,
        "validation RMSE better than the course params": new["val_rmse"] < summary["course_params_val_rmse"],
        "whole run at most 5 min": new["total_seconds"] <= 300,
        "validation RMSE no worse than the old tuning's": new["val_rmse"] <= old["val_rmse"]}
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
        raw_rows(kept)).astype(np.float64)
    for side in ("pipeline", "course"):
        written = pd.read_parquet(workdir / side / "predictions.parquet")
        np.testing.assert_array_equal(written["predicted_duration"].to_numpy(dtype=np.float64), expected)
        np.testing.assert_array_equal(written["actual_duration"].to_numpy(), actual)
    assert summary["identical"] is True and summary["checks"] == {"trips": True, "predictions": True}
    assert summary["live_rmse"] == pytest.approx(float(np.sqrt(np.mean((actual - expected) ** 2))), rel=1e-12)
    stages = {"read", "clean", "load model", "predict", "write"}
    assert set(summary["seconds"]["course"]) == set(summary["seconds"]["pipeline"]) == stages
    totals = summary["total_seconds"]
    assert summary["speedup"] == pytest.approx(totals["course"] / totals["pipeline"], abs=0.01)
    assert summary["goals"] == {  # each verdict follows the figures
        "rows/s >= 10x the course's": summary["speedup"] >= 10,
        "pipeline peak RSS <= 1.5 GB": summary["peak_rss_mb"]["pipeline"] <= 1536}
    assert "| rows/s | " in result.stdout
