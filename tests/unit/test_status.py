"""taxi/status.py, its pure parts: a registration's row with the registry's alias now, the tables' text, the scored
months of a local store."""

from __future__ import annotations

import datetime as dt
import json

from taxi import layout, status

CREATED = dt.datetime(2026, 3, 1, 12, 30, 5, tzinfo=dt.timezone.utc)
FOLDER = "runs/green/2021-01/v1-0123456789"


def registration(version: int = 1, run_id: str = "run1") -> dict:
    return {"version": version, "run_id": run_id, "decision": "champion", "gate_rmse": 6.31049,
            "reason": "champion: the first model", "task_id": "RegisterModel_green_1_2021_abc"}


def test_a_row_has_the_alias_the_registry_gives_its_version_now():
    versions = {1: status.Version("run1", ("challenger", "champion"), CREATED), 2: status.Version("run2", (), CREATED)}
    row = status.make_row("/store", FOLDER, registration(), versions)
    assert (row.month, row.version, row.alias, row.registered) == ("2021-01", 1, "champion", CREATED)
    assert row.report == f"/store/{FOLDER}/{layout.REPORT}" and row.folder == FOLDER
    assert status.make_row("/store", FOLDER, registration(2, "run2"), versions).alias == "none"
    challenger = {1: status.Version("run1", ("challenger",), CREATED)}
    assert status.make_row("/store", FOLDER, registration(1, "run1"), challenger).alias == "challenger"


def test_a_version_the_registry_lacks_or_holds_from_another_run_is_missing():
    versions = {1: status.Version("another-run", ("champion",), CREATED)}
    for found in ({}, versions):
        row = status.make_row("/store", FOLDER, registration(), found)
        assert (row.alias, row.registered) == (status.MISSING, None)
        assert status.cells(row)[:6] == ("2021-01", "v1", "missing", "champion", "6.3105", "-")


def test_the_table_is_sorted_by_month_and_version_in_aligned_columns():
    versions = {1: status.Version("run1", ("champion",), CREATED)}
    rows = [status.make_row("/s", "runs/green/2021-02/k", registration(2, "run2"), versions),
            status.make_row("/s", FOLDER, registration(), versions)]
    lines = status.table(rows).splitlines()
    assert [line.split()[0] for line in lines] == ["month", "2021-01", "2021-02"]
    assert len({line.index(" v") for line in lines[1:]}) == 1  # the version column starts at one place
    assert status.aligned([("a", "bbb", "last"), ("cc", "d", "x")]) == "a   bbb  last\ncc  d    x"


def test_the_scored_months_of_a_store_and_the_alert_note(tmp_path):
    for month, version, rmse, alert in (("2021-03", 1, 9.5, True), ("2021-02", 1, 6.4, False)):
        path = tmp_path / layout.scores("green", 2021, int(month[5:]), version)[layout.LIVE]
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"month": month, "model_version": version, "rmse": rmse, "registered_rmse": 6.3,
                                    "alert": alert, "rows": 61921}))
    lines = status.score_section(str(tmp_path), "green").splitlines()
    assert lines[0] == f"taxi-duration-green scored months (store {tmp_path})"
    assert [line.split()[:6] for line in lines[2:4]] == [["2021-02", "v1", "6.4000", "6.3000", "-", "61,921"],
                                                         ["2021-03", "v1", "9.5000", "6.3000", "ALERT", "61,921"]]
    assert lines[4].startswith("ALERT: ")
    assert status.score_section(str(tmp_path), "yellow") == f"taxi-duration-yellow: no scored month in {tmp_path}"


def test_without_a_central_scheduler_one_line_says_so():
    assert status.scheduler_section(None) == ("luigid: no central scheduler is configured ([core] local_scheduler = "
                                              "true)")
    assert status.first_line("\n  first\nsecond") == "first" and status.first_line("") == ""
