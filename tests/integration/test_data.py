"""Pure data functions on real TLC rows: month checks, source resolution, cleaning."""

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest

from bench.course import course_read_dataframe
from taxi import data

TODAY = dt.date(2026, 11, 27)


@pytest.mark.parametrize("color,year,month,message", [
    ("green", 2021, 0, "month must be 1..12, got 0"),
    ("green", 2021, 13, "month must be 1..12, got 13"),
    ("green", 2008, 5, "year must be 2009..2026, got 2008"),
    ("green", 2027, 1, "year must be 2009..2026, got 2027"),
    ("blue", 2021, 1, "unknown color 'blue': use one of green, yellow"),
    ("green", 2026, 10, "validation month 2026-11 (the month after 2026-10) is not over yet"),
    ("green", 2026, 12, "month 2026-12 has not happened yet"),
])
def test_validate_month_rejects_with_a_clear_message(color, year, month, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.validate_month(color, year, month, needs_next_month=True, today=TODAY)


def accepted(year: int, month: int, needs_next_month: bool) -> bool:
    try:
        data.validate_month("green", year, month, needs_next_month=needs_next_month, today=TODAY)
    except ValueError:
        return False
    return True


def test_validate_month_accepts_exactly_the_months_that_are_over_enough():
    """Every month of 2024..2026 as of TODAY (2026-11-27): a month to train on needs the month after it over (two
    or more months back), any other month to have begun (this month or earlier)."""
    for year in (2024, 2025, 2026):
        for month in range(1, 13):
            back = (TODAY.year * 12 + TODAY.month) - (year * 12 + month)
            assert accepted(year, month, needs_next_month=True) == (back >= 2), (year, month)
            assert accepted(year, month, needs_next_month=False) == (back >= 0), (year, month)


def test_next_month_crosses_the_year():
    assert data.next_month(2021, 12) == (2022, 1)
    assert data.next_month(2021, 1) == (2021, 2)


@pytest.mark.parametrize("source,expected", [
    (data.TLC_SOURCE, "https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_2021-03.parquet"),
    ("http://127.0.0.1:8000/tlc/", "http://127.0.0.1:8000/tlc/green_tripdata_2021-03.parquet"),
    ("file:///mirror", "file:///mirror/green_tripdata_2021-03.parquet"),
    ("s3://bucket/tlc", "s3://bucket/tlc/green_tripdata_2021-03.parquet"),
    ("/srv/tlc", "/srv/tlc/green_tripdata_2021-03.parquet"),
    ("http://m/{color}/{year}/{month:02d}.parquet", "http://m/green/2021/03.parquet"),
])
def test_source_url_resolves_templates_urls_and_folders(source, expected):
    assert data.source_url(source, "green", 2021, 3) == expected


@pytest.mark.parametrize("month,raw,clean", [("2021-01", 76_518, 73_908), ("2021-02", 64_572, 61_921)])
def test_clean_trips_matches_the_reference_counts_and_the_course_rows(tlc_dir, month, raw, clean):
    path = tlc_dir / f"green_tripdata_{month}.parquet"
    cleaned, stats = data.clean_trips(data.read_trips(path, "green"), "green")
    assert (stats.rows_raw, stats.rows_clean) == (raw, clean)
    course = course_read_dataframe(str(path)).reset_index(drop=True)
    for column in ("PULocationID", "DOLocationID", "PU_DO"):
        assert cleaned[column].tolist() == course[column].tolist()
    np.testing.assert_array_equal(cleaned["duration"].to_numpy(), course["duration"].to_numpy())
    np.testing.assert_array_equal(cleaned["trip_distance"].to_numpy(), course["trip_distance"].to_numpy())


def test_zone_dtype_drift_between_2023_01_and_02_does_not_matter(tlc_dir):
    jan, _ = data.clean_trips(data.read_trips(tlc_dir / "green_tripdata_2023-01.parquet", "green"), "green")
    feb, _ = data.clean_trips(data.read_trips(tlc_dir / "green_tripdata_2023-02.parquet", "green"), "green")
    assert (len(jan), len(feb)) == (65_946, 62_574)
    assert jan.dtypes.to_dict() == feb.dtypes.to_dict()
    assert feb["PU_DO"].str.fullmatch(r"\d+_\d+").all()


def trips(pickup, dropoff, distance=(1.0,), pu=(43,), do=(151,), prefix="lpep"):
    n = len(pickup)
    return pd.DataFrame({
        f"{prefix}_pickup_datetime": pd.to_datetime(pickup), f"{prefix}_dropoff_datetime": pd.to_datetime(dropoff),
        "PULocationID": list(pu) * (n // len(pu)), "DOLocationID": list(do) * (n // len(do)),
        "trip_distance": list(distance) * (n // len(distance)),
    })


def test_yellow_column_names_work():
    df = trips(["2021-01-01 10:00"], ["2021-01-01 10:12"], prefix="tpep")
    cleaned, _ = data.clean_trips(df, "yellow")
    assert cleaned.loc[0, "duration"] == 12.0 and cleaned.loc[0, "PU_DO"] == "43_151"


def test_float_zone_ids_become_integer_strings():
    df = trips(["2021-01-01 10:00"], ["2021-01-01 10:05"])
    df["PULocationID"] = df["PULocationID"].astype("float64")
    assert data.clean_trips(df, "green")[0].loc[0, "PU_DO"] == "43_151"


def test_dropoff_before_pickup_everywhere_leaves_no_rows():
    df = trips(["2021-01-01 10:00"] * 3, ["2021-01-01 09:00"] * 3)
    with pytest.raises(data.DataError, match="no trips left after cleaning"):
        data.clean_trips(df, "green", what="green 2021-01")


def test_missing_columns_are_named():
    df = trips(["2021-01-01 10:00"], ["2021-01-01 10:20"]).drop(columns=["trip_distance"])
    with pytest.raises(data.DataError, match="lacks required column.*trip_distance"):
        data.clean_trips(df, "green")


def test_nonfinite_distances_are_dropped_and_counted(caplog):
    df = trips(["2021-01-01 10:00"] * 4, ["2021-01-01 10:20"] * 4, distance=(1.5, np.nan, np.inf, 2.0))
    with caplog.at_level(logging.WARNING):
        cleaned, stats = data.clean_trips(df, "green")
    assert cleaned["trip_distance"].tolist() == [1.5, 2.0]
    assert stats.dropped_nonfinite_distance == 2
    assert "2 trips with a missing or infinite trip_distance" in caplog.text


def test_unknown_zones_warn_and_are_kept(caplog):
    df = trips(["2021-01-01 10:00"] * 2, ["2021-01-01 10:20"] * 2, pu=(300,), do=(151,))
    with caplog.at_level(logging.WARNING):
        cleaned, stats = data.clean_trips(df, "green")
    assert cleaned["PU_DO"].tolist() == ["300_151", "300_151"] and stats.unknown_zone_rows == 2
    assert "zone ids outside 1..265" in caplog.text


def test_cleaning_keeps_each_trips_pickup_time_beside_its_fields():
    df = trips(["2021-01-01 10:00", "2021-01-01 11:00", "2021-01-02 09:30"],
               ["2021-01-01 10:20", "2021-01-01 13:00", "2021-01-02 09:45"], distance=(1.5, 2.0, 3.0))
    cleaned, stats = data.clean_trips(df, "green")
    assert cleaned[data.PICKUP].tolist() == [pd.Timestamp("2021-01-01 10:00"), pd.Timestamp("2021-01-02 09:30")]
    assert cleaned["trip_distance"].tolist() == [1.5, 3.0] and stats.dropped_share == pytest.approx(1 / 3)


def test_check_raw_rejects_an_html_page_and_a_truncated_file(tmp_path, tlc_dir):
    html = tmp_path / "page.parquet"
    html.write_text("<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(data.DataError, match="not a readable parquet file"):
        data.check_raw(str(html), "green", "downloaded file X")
    whole = (tlc_dir / "green_tripdata_2021-01.parquet").read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(data.DataError, match="not a readable parquet file"):
        data.check_raw(str(truncated), "green", "downloaded file X")
    assert data.check_raw(str(tlc_dir / "green_tripdata_2021-01.parquet"), "green", "f") == 76_518


def test_check_raw_names_missing_datetime_columns(tmp_path):
    path = tmp_path / "no_dates.parquet"
    trips(["2021-01-01 10:00"], ["2021-01-01 10:20"]).drop(columns=["lpep_pickup_datetime"]).to_parquet(path)
    with pytest.raises(data.DataError, match="lacks required column.*lpep_pickup_datetime"):
        data.check_raw(str(path), "green", "downloaded file X")
