"""The served model's input (taxi/serving.py): raw rows as a user has them, to the columns the encoder reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taxi import features, serving

TRAIN = pd.DataFrame({"PU_DO": ["1_2"], "PULocationID": ["1"], "DOLocationID": ["2"], "trip_distance": [1.0],
                      "pickup_datetime": pd.to_datetime(["2021-01-04 08:30"])})
CLOCK = features.fit("clock", TRAIN, "lpep_pickup_datetime")


def test_the_pickup_time_is_read_from_timestamps_iso_strings_and_offsets_as_new_york_wall_clock_time():
    raw = pd.DataFrame({"PULocationID": [1, 5, 1], "DOLocationID": [2, 2, 2], "trip_distance": [1.0, 2.0, 3.0],
                        "lpep_pickup_datetime": ["2021-01-04T08:30:00-05:00", pd.Timestamp("2021-01-05 09:00"),
                                                 "2021-01-10T13:30:00Z"]})
    prepared = serving.prepare_raw(raw, CLOCK)
    assert prepared["pickup_datetime"].tolist() == [pd.Timestamp("2021-01-04 08:30"), pd.Timestamp("2021-01-05 09:00"),
                                                    pd.Timestamp("2021-01-10 08:30")]
    assert prepared["PU_DO"].tolist() == ["1_2", "5_2", "1_2"]  # zone ids as cleaning writes them
    np.testing.assert_array_equal(features.transform(CLOCK, prepared)[:, 4:], [[8, 0], [9, 1], [8, 6]])


def test_a_missing_column_or_a_row_without_a_time_is_refused_naming_it():
    raw = pd.DataFrame({"PULocationID": [1, 1], "DOLocationID": [2, 2], "trip_distance": [1.0, 1.0],
                        "lpep_pickup_datetime": ["2021-01-04 08:30", None]})
    with pytest.raises(ValueError, match="input lacks column.s. lpep_pickup_datetime: a model of this feature set "
                                         "reads PULocationID, DOLocationID, trip_distance, lpep_pickup_datetime"):
        serving.prepare_raw(raw.drop(columns="lpep_pickup_datetime"), CLOCK)
    with pytest.raises(ValueError, match=r"column lpep_pickup_datetime has no pickup time in 1 row\(s\), the first "
                                         r"at position 1 "):
        serving.prepare_raw(raw, CLOCK)
    # a course model reads no time, and its contract has none
    course = features.fit("course", TRAIN, "lpep_pickup_datetime")
    assert len(serving.prepare_raw(raw.drop(columns="lpep_pickup_datetime"), course)) == 2
    assert serving.signature(course).inputs.input_names() == ["PULocationID", "DOLocationID", "trip_distance"]
    assert serving.signature(CLOCK).inputs.input_names()[-1] == "lpep_pickup_datetime"
