"""Promote only on evidence (issues 18, 24): the gate rows no step saw, the thresholds, the data checks, the input
contract, drift from the validation month, and the months' order.

The pipeline runs in process on a local sqlite registry (`luigi_config`) over synthetic green months of 8000 trips
resampled from the real 2021-01 and 2021-02 (tests/support/cluster.write_months), so consecutive months do not drift,
and months corrupted the ways tests/support/corrupt.py knows. Every RMSE the product records is checked against the
models re-scored by the test itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import luigi
import luigi.configuration
import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from taxi import checks, data, drift, layout, metrics, promotion, registry, storage, tasks
from tests.support.cluster import write_months
from tests.support.corrupt import CORRUPTIONS, write_corrupted

MODEL = registry.model_name("green")
ROWS = 8000
ONE_TREE = {"max_evals": "1", "num_boost_round": "1"}  # a model any tuned one beats
POLICY = promotion.Policy()


# ---------------------------------------------------------------------------------------------------------------
# The rules, one by one


# ---------------------------------------------------------------------------------------------------------------
# Data checks and drift, on the real months and their corruptions


def cleaned(path: Path, ym: str) -> tuple[pd.DataFrame, data.CleanStats]:
    return data.clean_trips(data.read_trips(path, "green"), "green", what=ym)


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory, tlc_dir) -> Path:
    """Every corruption of the real 2021-02 and 2023-02, as {kind}-{month}.parquet."""
    folder = tmp_path_factory.mktemp("corrupted")
    for ym in ("2021-02", "2023-02"):
        for kind in CORRUPTIONS:
            write_corrupted(tlc_dir / f"green_tripdata_{ym}.parquet", folder / f"{kind}-{ym}.parquet", kind)
    return folder


@pytest.mark.parametrize("ym", ["2021-02", "2023-02"])
@pytest.mark.parametrize("kind,stopped_by", [("distances-out-of-range", "trip_distance in 0..100 miles: 19."),
                                             ("most-rows-lost", "rows dropped by cleaning: 7")])
def test_a_month_with_broken_values_fails_a_check_naming_column_check_and_share(corrupted, tlc_dir, ym, kind,
                                                                               stopped_by):
    year, month = map(int, ym.split("-"))
    real, stats = cleaned(tlc_dir / f"green_tripdata_{ym}.parquet", ym)
    assert all(not f.failed for f in checks.check_month(real, stats, year, month, checks.CheckSettings(), ym))
    trips, stats = cleaned(corrupted / f"{kind}-{ym}.parquet", ym)
    with pytest.raises(checks.CheckFailed) as failed:
        checks.check_month(trips, stats, year, month, checks.CheckSettings(), f"green {ym}")
    assert str(failed.value).startswith(f"green {ym}: check failed: {stopped_by}"), failed.value
    assert "% may)" in str(failed.value)


@pytest.mark.parametrize("reference,ym", [("2021-01", "2021-02"), ("2023-01", "2023-02")])
def test_consecutive_real_months_do_not_drift_and_a_changed_feed_does(corrupted, tlc_dir, reference, ym):
    before, _ = cleaned(tlc_dir / f"green_tripdata_{reference}.parquet", reference)
    real, _ = cleaned(tlc_dir / f"green_tripdata_{ym}.parquet", ym)
    assert [m.text() for m in drift.compare(real, before, drift.DriftSettings()) if m.over] == []
    for kind, feature in (("kilometres", "trip_distance"), ("remapped-zones", "PULocationID")):
        trips, _ = cleaned(corrupted / f"{kind}-{ym}.parquet", ym)
        over = {m.feature for m in drift.compare(trips, before, drift.DriftSettings()) if m.over}
        assert feature in over and over <= {feature, "DOLocationID"}, (kind, over)


def test_the_gate_split_is_the_same_in_another_process_and_follows_the_share(tlc_dir, tmp_path):
    """The split hashes each trip's own fields: another interpreter (another hash seed) picks the same trips, a
    larger share picks more (a superset), and a trip's place in the file does not matter."""
    trips, _ = cleaned(tlc_dir / "green_tripdata_2021-02.parquet", "2021-02")
    gate = data.gate_rows(trips, 0.5)
    assert abs(gate.mean() - 0.5) < 0.01
    assert (gate <= data.gate_rows(trips, 0.6)).all() and abs(data.gate_rows(trips, 0.6).mean() - 0.6) < 0.01
    shuffled = np.random.default_rng(3).permutation(len(trips))
    np.testing.assert_array_equal(data.gate_rows(trips.iloc[shuffled], 0.5), gate[shuffled])
    trips.to_parquet(tmp_path / "trips.parquet")
    script = ("import sys, pandas as pd; from taxi import data; "
              "sys.stdout.write(data.gate_rows(pd.read_parquet(sys.argv[1]), 0.5).tobytes().hex())")
    other = subprocess.run([sys.executable, "-c", script, str(tmp_path / "trips.parquet")], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.returncode == 0, other.stderr
    np.testing.assert_array_equal(np.frombuffer(bytes.fromhex(other.stdout), dtype=bool), gate)


# ---------------------------------------------------------------------------------------------------------------
# Through the pipeline: one registry, month after month


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, tlc_dir) -> Path:
    """Synthetic green months 2021-12 .. 2022-06; in 2022-03 and 2022-06 the feed measured distances in kilometres."""
    folder = tmp_path_factory.mktemp("months")
    write_months(folder, tlc_dir, [(2021, 12), *((2022, m) for m in range(1, 7))], ROWS)
    for month in ("2022-03", "2022-06"):
        kilometres = folder / f"green_tripdata_{month}.parquet"
        pq.write_table(CORRUPTIONS["kilometres"](pq.read_table(kilometres)), kilometres)
    return folder


def register(year: int, month: int, tuning: dict[str, str] | None = None, **settings: str) -> dict:
    """RegisterModel for green `year`-`month` with SMALL_TUNING changed by `tuning` and [RegisterModel] `settings`;
    its registration.json."""
    config = luigi.configuration.get_config()
    for key, value in (tuning or {}).items():
        config.set("TuneHyperparams", key, value)
    for key, value in settings.items():
        config.set("RegisterModel", key, value)
    task = tasks.RegisterModel(year=year, month=month)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    registration = task.output()[layout.REGISTRATION]
    for key in tuning or {}:
        config.remove_option("TuneHyperparams", key)
    for key in settings:
        config.remove_option("RegisterModel", key)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return storage.read_json(registration)


def gate_of(store: Path, ym: str, share: float = 0.5) -> pd.DataFrame:
    """The gate rows of a validation month, picked by the test from the stored cleaned month."""
    [path] = store.glob(f"clean/*/green/{ym}.parquet")
    valid = pd.read_parquet(path)
    return valid[data.gate_rows(valid, share)]


def rescored(version: int, gate: pd.DataFrame) -> float:
    """The RMSE the test itself gets from registered `version` on `gate`, given as a green month's raw rows."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    rows = gate.rename(columns={"pickup_datetime": "lpep_pickup_datetime"})
    return metrics.rmse(gate["duration"], model.predict(
        rows[["PULocationID", "DOLocationID", "trip_distance", "lpep_pickup_datetime"]]))


def aliases() -> dict[str, int]:
    return {alias: int(v) for alias, v in MlflowClient().get_registered_model(MODEL).aliases.items()}


def test_month_after_month_the_champion_rests_on_gate_rows_thresholds_drift_and_time(luigi_config, mirror):
    config = luigi.configuration.get_config()
    config.set("taxi", "source", str(mirror))
    mlflow.set_tracking_uri(luigi_config["mlflow"]["tracking_uri"])
    store = Path(luigi_config["taxi"]["store"])

    # a weak first model: champion, scored on the gate rows only, which no training step read
    first = register(2022, 1, ONE_TREE)
    gate = gate_of(store, "2022-02")
    assert (first["version"], first["decision"], first["previous_champion_version"]) == (1, "champion", None)
    assert first["reason"].startswith("champion: the first model, RMSE ") and aliases() == {"champion": 1}
    assert first["gate_rmse"] == pytest.approx(rescored(1, gate), rel=1e-9) and first["gate_rows"] == len(gate)
    assert registry.registered_rmse(MODEL, 1) == pytest.approx(first["gate_rmse"], rel=1e-9)
    _, _, _, X_selection, _ = tasks.load_features(tasks.BuildFeatures(year=2022, month=1).output())
    assert X_selection.shape[0] + len(gate) == storage.read_json(
        tasks.CleanMonth(year=2022, month=2).output()["stats"])["rows_clean"]
    assert first["gate_rmse"] != pytest.approx(first["val_rmse"], rel=1e-6)  # selection rows are other rows
    assert first["reference_month"] == "2022-02" and not any(m["over"] for m in first["drift"])

    # 2022-03's distances are in kilometres: drifted from its own validation month, registered, held
    held = register(2022, 3)
    assert (held["version"], held["decision"]) == (2, "held") and aliases() == {"champion": 1}
    assert held["reference_month"] == "2022-04" and held["reason"].startswith("held: data drift (trip_distance JS ")
    assert [m["feature"] for m in held["drift"] if m["over"]] == ["trip_distance"]
    version_tags = MlflowClient().get_model_version(MODEL, "2").tags
    assert version_tags[registry.REASON_TAG] == held["reason"]

    # a good next month is compared with the champion, not the held model, re-scored on its own gate rows
    better = register(2022, 4)
    gate = gate_of(store, "2022-05")
    assert (better["version"], better["decision"], better["previous_champion_version"]) == (3, "champion", 1)
    assert better["previous_champion_gate_rmse"] == pytest.approx(rescored(1, gate), rel=1e-9)
    assert better["previous_champion_gate_rmse"] != pytest.approx(first["gate_rmse"], rel=1e-6)  # another month
    assert better["gate_rmse"] == pytest.approx(rescored(3, gate), rel=1e-9)
    assert better["gate_rmse"] < better["previous_champion_gate_rmse"]
    assert better["reference_month"] == "2022-05" and not any(m["over"] for m in better["drift"])
    assert aliases() == {"champion": 3}

    # a backfill of an older month leaves the champion where it is
    backfill = register(2021, 12)
    assert (backfill["version"], backfill["decision"]) == (4, "older") and aliases() == {"champion": 3}
    assert backfill["reason"] == "older than the champion: trained on 2021-12, champion v3 on 2022-04"

    # a month whose validation month is broken is held too; accepted on purpose, it is decided again against the
    # same champion, on the margin, recorded as such
    later = register(2022, 5)
    assert (later["version"], later["decision"], later["reference_month"]) == (5, "held", "2022-06")
    accepted = register(2022, 5, accept_drift="true")
    assert (accepted["version"], accepted["accept_drift"], accepted["previous_champion_version"]) == (5, True, 3)
    gate = gate_of(store, "2022-06")
    expected = "champion" if rescored(5, gate) < rescored(3, gate) * (1 - 0.005) else "challenger"  # the margin
    assert accepted["decision"] == expected and aliases()[expected] == 5
    assert accepted["reason"].endswith(f"; data drift accepted ({later['reason'].removeprefix('held: data drift (')}")

    # a model above the cap is registered and never made champion: the cap comes before the drift of its
    # validation month (2022-03, in kilometres)
    capped = register(2022, 2, max_rmse="1")
    assert (capped["version"], capped["decision"]) == (6, "rejected") and aliases()["champion"] != 6
    assert any(m["over"] for m in capped["drift"])
    assert capped["gate_rmse"] == pytest.approx(rescored(6, gate_of(store, "2022-03")), rel=1e-9)
    assert capped["reason"] == f"rejected: RMSE {capped['gate_rmse']:.2f} above the cap 1"
    report = Path(tasks.RegisterModel(year=2022, month=2).output()[layout.REPORT].path).read_text()
    assert f"Decision: **rejected**: {capped['reason'].removeprefix('rejected: ')}." in report
    assert f"{capped['gate_rmse'] - capped['val_rmse']:+.4f}" in report


def test_a_month_that_fails_a_check_stops_at_clean_month_and_nothing_downstream_runs(luigi_config, corrupted,
                                                                                    tmp_path):
    """One line naming the column, the check and the share; no target of the month; the run exits non-zero."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "green_tripdata_2021-02.parquet").symlink_to(corrupted / "distances-out-of-range-2021-02.parquet")
    luigi.configuration.get_config().set("taxi", "source", str(mirror))
    task = tasks.BuildFeatures(year=2021, month=1)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == luigi.execution_summary.LuigiStatusCode.FAILED
    clean = tasks.CleanMonth(year=2021, month=2)
    assert not clean.output()["data"].exists() and not clean.output()["stats"].exists()
    assert not any(target.exists() for target in task.output().values())
