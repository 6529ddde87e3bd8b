"""The feature sets' matrices (taxi/features.py), against values the tests compute themselves."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from taxi import features


def test_the_clock_set_gives_categories_distance_hour_and_weekday():
    """Row by row against values the test computes itself: the zones and pair as codes of the training month's
    sorted categories (unseen: missing), the distance, and the pickup's hour and day of the week."""
    train = pd.DataFrame({"PU_DO": ["1_2", "10_2", "1_2"], "PULocationID": ["1", "10", "1"],
                          "DOLocationID": ["2", "2", "2"], "trip_distance": [1.5, 0.0, 2.0],
                          "pickup_datetime": pd.to_datetime(["2021-01-04 08:30", "2021-01-09 23:59",
                                                             "2021-01-10 00:00"])})
    encoder = features.fit("clock", train, "lpep_pickup_datetime")
    assert encoder.categories == {"PU_DO": ["10_2", "1_2"], "PULocationID": ["1", "10"], "DOLocationID": ["2"]}
    valid = train.assign(PU_DO=["1_2", "3_4", "10_2"], PULocationID=["1", "3", "10"])
    X = features.transform(encoder, valid)
    expected = np.array([[1, 0, 0, 1.5, 8, 0], [np.nan, np.nan, 0, 0.0, 23, 5], [0, 1, 0, 2.0, 0, 6]])
    np.testing.assert_array_equal(X, expected.astype(np.float32))
    assert encoder.feature_types == ["c", "c", "c", "q", "q", "q"] and features.feature_types(encoder) is not None
    assert features.feature_types(features.fit("course", train, "lpep_pickup_datetime")) is None
    buf = io.BytesIO()
    features.save_matrix(X, np.zeros(3), buf)
    np.testing.assert_array_equal(features.load_matrix(buf.getvalue())[0], X)
