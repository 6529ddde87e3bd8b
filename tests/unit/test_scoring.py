"""taxi/scoring.py, its pure parts: whether a month alerts, what live.json records of it and the log line."""

from __future__ import annotations

import pytest

from taxi import scoring

MODEL = scoring.ModelVersion("taxi-duration-green", 1, "run1", "m-1", "2021-01", "2021-02", 6.4)
LIVE = {"rmse": 7.7, "mae": 5.1, "rows": 7981}


@pytest.mark.parametrize("share,alert", [(0.2, True), (0.21, False), (0.0, True)])
def test_the_record_alerts_by_the_share_it_is_given(share, alert):
    record = scoring.live_record("green", "2021-03", MODEL, LIVE, share)
    assert (record["alert"], record["alert_share"]) == (alert, share)
    assert {key: record[key] for key in ("model_version", "model_train_month", "registered_rmse", "rows")} == {
        "model_version": 1, "model_train_month": "2021-01", "registered_rmse": 6.4, "rows": 7981}


def test_a_version_without_a_registered_rmse_never_alerts_and_says_so():
    unregistered = scoring.ModelVersion("taxi-duration-green", 4, "run4", None, None, None, None)
    record = {**scoring.live_record("green", "2021-03", unregistered, {**LIVE, "rmse": 99.0}, 0.0), "predictions": "p"}
    assert record["alert"] is False
    assert scoring.summary(record) == ("green 2021-03 scored with taxi-duration-green v4: live RMSE 99.0000 min, MAE "
                                       "5.1000 min, 7,981 trips (the version has no registered RMSE to compare "
                                       "with); p")
    assert MODEL.uri == "models:/taxi-duration-green/1"


def test_the_summary_names_the_rmse_above_which_it_alerts():
    record = {**scoring.live_record("green", "2021-03", MODEL, LIVE, 0.25), "predictions": "p"}
    assert "(registered RMSE 6.4000, alert above 8.0000); p" in scoring.summary(record)


def test_exactly_the_share_above_is_not_more_than_it():
    assert not scoring.is_alert(6.0, 4.0, 0.5) and scoring.is_alert(6.0001, 4.0, 0.5)
    assert not scoring.is_alert(1e9, None, 0.0)
