"""taxi/data.py: month arithmetic, file names, the raw file's check, the cleaning rules at their edges and the gate
split (tests/integration/test_data.py has the real months)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taxi import data


def test_months_are_named_and_counted_like_the_tlc_s_files():
    assert data.ym(2021, 3) == "2021-03" and data.tlc_filename("yellow", 2021, 3) == "yellow_tripdata_2021-03.parquet"
    assert [data.next_month(2021, m) for m in (1, 11, 12)] == [(2021, 2), (2021, 12), (2022, 1)]
    assert data.required_columns("yellow")[:2] == ["tpep_pickup_datetime", "tpep_dropoff_datetime"]


def test_dropped_share_is_all_of_an_empty_month():
    assert data.dropped_share(200, 150) == 0.25
    assert data.dropped_share(0, 0) == 1.0
    assert data.CleanStats(10, 9, 0, 0).dropped_share == pytest.approx(0.1)
    assert data.CleanStats(10, 9, 1, 2).record() == {"rows_raw": 10, "rows_clean": 9,
                                                      "dropped_nonfinite_distance": 1, "unknown_zone_rows": 2}


def trips(minutes: list[float], distance: float = 2.0) -> pd.DataFrame:
    pickup = pd.Timestamp("2021-01-05 08:00")
    return pd.DataFrame({"lpep_pickup_datetime": [pickup] * len(minutes),
                         "lpep_dropoff_datetime": [pickup + pd.Timedelta(minutes=m) for m in minutes],
                         "PULocationID": [43] * len(minutes), "DOLocationID": [151] * len(minutes),
                         "trip_distance": [distance] * len(minutes)})


def test_cleaning_keeps_durations_from_one_to_sixty_minutes_inclusive():
    cleaned, stats = data.clean_trips(trips([0.99, 1.0, 30.0, 60.0, 60.01, -5.0]), "green")
    assert cleaned["duration"].tolist() == [1.0, 30.0, 60.0]
    assert (stats.rows_raw, stats.rows_clean) == (6, 3)


def test_cleaning_keeps_odd_but_finite_distances_for_the_checks_to_judge():
    cleaned, _ = data.clean_trips(trips([10.0], distance=-3.0), "green")
    assert cleaned["trip_distance"].tolist() == [-3.0]


def test_timestamps_given_as_text_are_refused_naming_the_columns():
    text = trips([10.0]).astype({"lpep_pickup_datetime": str})
    with pytest.raises(data.DataError, match=r"^green 2021-01: lpep_pickup/dropoff_datetime must be timestamps, got "):
        data.clean_trips(text, "green", what="green 2021-01")


def test_the_gate_split_follows_the_share_and_only_the_trip_s_own_fields():
    rng = np.random.default_rng(1)
    month = pd.DataFrame({data.PICKUP: pd.Timestamp("2021-02-01") + pd.to_timedelta(rng.integers(0, 10**6, 4000), "s"),
                          "PULocationID": rng.integers(1, 266, 4000).astype(str),
                          "DOLocationID": rng.integers(1, 266, 4000).astype(str),
                          "trip_distance": rng.random(4000) * 10, "duration": rng.random(4000) * 59 + 1})
    assert not data.gate_rows(month, 0.0).any() and data.gate_rows(month, 1.0).all()
    half, more = data.gate_rows(month, 0.5), data.gate_rows(month, 0.7)
    assert 0.46 < half.mean() < 0.54 and (half <= more).all()
    moved = month.assign(other=1).set_index(np.arange(4000) * 7)  # another column and index change nothing
    np.testing.assert_array_equal(data.gate_rows(moved, 0.5), half)
    changed = month.assign(duration=month["duration"] + 1)  # a trip's own field does
    assert (data.gate_rows(changed, 0.5) != half).mean() > 0.3


def test_a_raw_file_s_rows_are_counted_from_its_footer(tmp_path):
    path = tmp_path / "green_tripdata_2021-01.parquet"
    trips([5.0] * 7).to_parquet(path)
    assert data.check_raw(str(path), "green", "downloaded file") == 7
    with pytest.raises(data.DataError, match=r"^downloaded file lacks required column\(s\) tpep_dropoff_datetime, "
                                             r"tpep_pickup_datetime for yellow trips$"):
        data.check_raw(str(path), "yellow", "downloaded file")
