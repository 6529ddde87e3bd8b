"""taxi/checks.py: the data checks of a cleaned month, their bounds and the share of rows that may fail each."""

from __future__ import annotations

import pandas as pd
import pytest

from taxi.checks import DROPPED, CheckFailed, CheckSettings, Finding, check_month
from taxi.data import PICKUP, CleanStats

ROWS = 200


def month(rows: int = ROWS) -> pd.DataFrame:
    """A cleaned January 2021 that passes every check: zones 1..265, 1..5 miles, pickups inside the month."""
    return pd.DataFrame({
        "PULocationID": [str(1 + i % 265) for i in range(rows)],
        "DOLocationID": [str(265 - i % 265) for i in range(rows)],
        "trip_distance": [1.0 + i % 5 for i in range(rows)],
        "duration": [10.0] * rows,
        PICKUP: pd.date_range("2021-01-01", "2021-01-31 23:00", periods=rows),
    })


def stats(rows_raw: int = ROWS, rows_clean: int = ROWS) -> CleanStats:
    return CleanStats(rows_raw, rows_clean, 0, 0)


DEFAULTS = CheckSettings()


def findings(trips: pd.DataFrame, settings: CheckSettings = DEFAULTS, raw: int | None = None) -> dict:
    """Each check's failing row count, by check."""
    found = check_month(trips, stats(raw or len(trips), len(trips)), 2021, 1, settings, "green 2021-01")
    return {finding.check: finding.failing for finding in found}


def test_a_plausible_month_passes_every_check_with_none_failing():
    assert findings(month()) == {DROPPED: 0, "PULocationID zone id in 1..265": 0, "DOLocationID zone id in 1..265": 0,
                                 "trip_distance in 0..100 miles": 0, "pickup_datetime in the file's month ± 1 days": 0}


def test_each_check_counts_the_rows_that_fail_it_and_its_bounds_are_inclusive():
    trips = month()
    trips.loc[0:2, "PULocationID"] = ["0", "266", "x"]
    trips.loc[3, "DOLocationID"] = "43.0"
    trips.loc[4:6, "trip_distance"] = [-0.1, 100.01, 1e5]
    trips.loc[7:8, "trip_distance"] = [0.0, 100.0]  # the bounds themselves pass
    trips.loc[9:12, PICKUP] = pd.to_datetime(["2020-12-30 23:59:59", "2021-02-02 00:00:01",  # a day and a second out
                                              "2020-12-31 00:00:00", "2021-02-02 00:00:00"])  # a day out exactly
    relaxed = CheckSettings(max_failing_share=0.5)
    assert findings(trips, relaxed) == {DROPPED: 0, "PULocationID zone id in 1..265": 3,
                                        "DOLocationID zone id in 1..265": 1, "trip_distance in 0..100 miles": 3,
                                        "pickup_datetime in the file's month ± 1 days": 2}


def test_the_settings_move_the_bounds():
    trips = month()
    trips.loc[0, "trip_distance"] = 7.5
    trips.loc[1:2, PICKUP] = pd.to_datetime(["2020-12-31 17:59", "2020-12-31 18:00"])  # 6 h 1 min and 6 h out
    settings = CheckSettings(max_failing_share=0.5, max_distance=7.0, pickup_slack_days=0.25)
    assert findings(trips, settings) == {DROPPED: 0, "PULocationID zone id in 1..265": 0,
                                         "DOLocationID zone id in 1..265": 0, "trip_distance in 0..7 miles": 1,
                                         "pickup_datetime in the file's month ± 0.25 days": 1}


def test_a_check_fails_only_above_its_share_and_the_error_names_column_check_and_share():
    trips = month()
    trips.loc[0:1, "trip_distance"] = 150.0  # 2 of 200 rows: 1 %, what may fail
    assert findings(trips)["trip_distance in 0..100 miles"] == 2
    trips.loc[2, "trip_distance"] = 150.0
    with pytest.raises(CheckFailed) as failed:
        findings(trips)
    assert str(failed.value) == ("green 2021-01: check failed: trip_distance in 0..100 miles: 1.5% of 200 rows (at "
                                 "most 1% may); the month's data looks wrong: fix the source, or change the "
                                 "[CleanMonth] check settings")


def test_rows_dropped_by_cleaning_are_a_check_of_the_raw_rows():
    assert findings(month(), raw=250)[DROPPED] == 50  # 20 %, what may be dropped
    with pytest.raises(CheckFailed, match=r"check failed: rows dropped by cleaning: 20\.3% of 251 rows \(at most 20% "):
        findings(month(), raw=251)
    with pytest.raises(CheckFailed, match=r"check failed: rows dropped by cleaning: 100\.0% of 200 rows \(at most 20"):
        findings(month().iloc[:0], raw=200)  # no rows left: the first check to fail is the drop


@pytest.mark.parametrize("broken", ["missing", "wrong type"])
def test_a_column_missing_or_of_another_type_is_not_counted_but_named(broken):
    trips = month()
    if broken == "missing":
        trips = trips.drop(columns=["trip_distance"])
    else:
        trips["trip_distance"] = trips["trip_distance"].astype(str)
    with pytest.raises(CheckFailed, match=r"^green 2021-01: column trip_distance fails .*: the month's schema is not "
                                          r"the one cleaning makes$"):
        findings(trips)


@pytest.mark.parametrize("settings,named", [
    (CheckSettings(max_failing_share=-0.01), "max_failing_share must be at least 0 and below 1, got -0.01"),
    (CheckSettings(max_failing_share=1.0), "max_failing_share must be at least 0 and below 1, got 1.0"),
    (CheckSettings(max_drop_share=1.0), "max_drop_share must be at least 0 and below 1, got 1.0"),
    (CheckSettings(max_distance=0), "max_distance must be above 0 and pickup_slack_days at least 0, got 0 and 1.0"),
    (CheckSettings(pickup_slack_days=-1), "got 100.0 and -1"),
])
def test_settings_out_of_range_are_refused_naming_the_setting(settings, named):
    with pytest.raises(ValueError, match=r"^\[CleanMonth\] .*" + named.replace(".", r"\.")):
        settings.validate()


def test_the_edges_of_the_ranges_are_valid_settings():
    CheckSettings(max_failing_share=0, max_drop_share=0.999, max_distance=0.1, pickup_slack_days=0).validate()


def test_a_finding_fails_strictly_above_its_share_and_says_so_in_percent():
    assert not Finding("c", 1, 100, 0.01).failed and Finding("c", 2, 100, 0.01).failed
    assert Finding("c", 0, 0, 0.5).share == 1.0  # no rows at all: nothing passed
    assert Finding("trip_distance in 0..100 miles", 1234, 73908, 0.01).text() == \
        "trip_distance in 0..100 miles: 1.7% of 73,908 rows (at most 1% may)"
