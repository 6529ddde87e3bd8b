"""taxi/notify.py: the webhook's texts, and what a failing webhook is logged as (never its URL)."""

from __future__ import annotations

import logging
import os
import socket
import urllib.error

from taxi import notify


def test_a_failure_text_names_task_host_type_and_the_first_line():
    text = notify.failure_text("CleanMonth(color=green, year=2021, month=1)", ValueError("\n bad month\nsecond line"))
    assert text == f"taxi: CleanMonth(color=green, year=2021, month=1) FAILED on {socket.gethostname()}: ValueError: " \
                   f"bad month"
    assert notify.failure_text("T()", KeyError()).endswith(": KeyError")


def test_a_decision_text_has_version_month_rmse_reason_and_the_report_s_full_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    registration = {"name": "taxi-duration-green", "version": 3, "gate_rmse": 6.310449, "reason": "champion: first"}
    assert notify.decision_text(registration, "2021-01", "data/runs/report.md") == (
        f"taxi: taxi-duration-green v3, trained on 2021-01, gate RMSE 6.3104 min: champion: first; report "
        f"{os.path.join(tmp_path, 'data/runs/report.md')}")
    assert notify.decision_text(registration, "2021-01", "s3://b/runs/report.md").endswith("; report s3://b/runs/report.md")


def test_a_live_error_text_says_how_much_worse_than_registered_and_what_is_allowed():
    record = {"model_name": "taxi-duration-green", "model_version": 1, "color": "green", "month": "2021-03",
              "rmse": 7.7, "registered_rmse": 6.4, "alert_share": 0.2, "rows": 7981, "predictions": "/s/p.parquet"}
    assert notify.live_error_text(record) == (
        "taxi: live error alert: taxi-duration-green v1 on green 2021-03: live RMSE 7.7000 min, 20.3% above the "
        "6.4000 min it was registered with (more than the 20% allowed); 7,981 trips; predictions /s/p.parquet")


def test_only_the_scheme_host_and_port_of_the_webhook_are_ever_shown():
    assert notify._where("https://user:pw@hooks.example:8443/services/T0/B0/SECRET?x=1") == "https://hooks.example:8443"
    assert notify._where("https://hooks.example/services/SECRET") == "https://hooks.example"
    assert notify._where("http://hooks.example:99999/SECRET") == "of TAXI_WEBHOOK_URL"  # a port out of range
    assert notify._where("SECRET") == "of TAXI_WEBHOOK_URL"


def test_why_a_post_failed_is_told_without_the_url():
    url = "https://hooks.example/services/SECRET"
    assert notify._reason(urllib.error.HTTPError(url, 500, "boom " + url, {}, None)) == "HTTP 500"
    assert notify._reason(ValueError("unknown url type: " + url)) == "TAXI_WEBHOOK_URL is not a valid http(s) URL"
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert notify._reason(refused) == "ConnectionRefusedError: Connection refused"
    assert notify._reason(TimeoutError()) == "TimeoutError"


def test_post_sends_nothing_without_the_variable_and_never_logs_the_url(monkeypatch, caplog):
    monkeypatch.delenv(notify.ENV, raising=False)
    assert notify.post("text") is False
    monkeypatch.setenv(notify.ENV, "ftp://hooks.example/SECRET")
    with caplog.at_level(logging.WARNING):
        assert notify.post("text") is False
    assert caplog.messages == ["webhook ftp://hooks.example did not take the message (TAXI_WEBHOOK_URL is not a valid "
                               "http(s) URL); the run goes on"]
