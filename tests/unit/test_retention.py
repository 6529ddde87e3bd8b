"""taxi/retention.py, its pure parts: store paths read back into their layout fields, the newest months, what the
registrations of aliased versions keep, and how each file is sorted out (kept, recent, other, stale)."""

from __future__ import annotations

import pytest

from taxi import layout, retention
from taxi.storage import StoredFile

NOW = 1_800_000_000.0
HOUR = 3600.0
REGISTRY = "http://127.0.0.1:5000"
FIELDS = {"color": "green", "ym": "2021-01", "key": "v2-0123456789", "version": "3", "name": "booster.ubj"}


def test_every_target_path_of_the_layout_reads_back_into_its_template_and_fields():
    for template in retention.MANAGED:
        path = template.format(**FIELDS)
        used = {name: value for name, value in FIELDS.items() if "{" + name + "}" in template}
        assert retention.parse(path) == (template, used), path
    assert retention.parse(layout.task_log("CleanMonth", "CleanMonth_green_1_2021_ab", "20261206T091500Z-h-1")["log"]) \
        is None
    assert retention.parse("notes/readme.txt") is None
    assert retention.parse("raw/green/yellow_tripdata_2021-01.parquet") is None  # one color, named twice
    temporary = layout.CLEAN.format(**FIELDS) + "-luigi-tmp-0123456789"
    assert retention.is_temporary(temporary) and retention.parse(temporary) is None
    assert not retention.is_temporary(layout.CLEAN.format(**FIELDS))


def test_the_newest_months_are_exactly_that_many():
    months = ["2023-02", "2021-01", "2021-02", "2023-01", "2021-02"]
    assert retention.newest_months(months, 1) == ["2023-02"]
    assert retention.newest_months(months, 2) == ["2023-01", "2023-02"]
    assert retention.newest_months(months, 4) == ["2021-01", "2021-02", "2023-01", "2023-02"]
    assert retention.newest_months(months, 9) == ["2021-01", "2021-02", "2023-01", "2023-02"]
    assert retention.newest_months(months, 0) == []


def test_a_color_s_months_are_those_it_has_targets_of():
    paths = [layout.raw("green", 2021, 1)["data"], layout.scores("green", 2021, 3, 2)["live.json"],
             layout.tuning("yellow", 2022, 5, "k"), layout.clean("green", 2024, 1, "k")["data"] + "-luigi-tmp-12",
             "logs/CleanMonth/x/1.log"]
    assert retention.store_months(paths) == {"green": {"2021-01", "2021-03"}, "yellow": {"2022-05"}}


def registration(version: int, run_id: str, needs: list[str] | None, registry: str = REGISTRY) -> tuple[str, dict]:
    record = {"name": "taxi-duration-green", "version": version, "run_id": run_id, "month": "2021-01",
              "tracking_uri": registry}
    if needs is not None:
        record["needs"] = needs
    return f"runs/green/2021-01/v1-{version:010d}", record


def test_an_aliased_version_keeps_what_its_registration_needs_and_no_other_version_does():
    champion = retention.Aliased("green", "taxi-duration-green", 2, "run2", ("champion",))
    registrations = [registration(1, "run1", ["clean/a/green/2021-01.parquet"]),
                     registration(2, "run2", ["clean/b/green/2021-01.parquet", "raw/x"]),
                     registration(3, "run9", ["clean/c/green/2021-01.parquet"])]  # v3 is another run here: no alias
    keep, notes = retention.registration_needs(registrations, [champion], REGISTRY, [])
    why = "taxi-duration-green v2 (@champion) needs them"
    assert keep == {"clean/b/green/2021-01.parquet": why, "raw/x": why} and notes == []
    same_number_other_run = retention.Aliased("green", "taxi-duration-green", 1, "run7", ("challenger",))
    keep, notes = retention.registration_needs(registrations, [same_number_other_run], REGISTRY, [])
    assert keep == {} and notes == ["taxi-duration-green v1 (@challenger): no registration in the store, so nothing "
                                    "of its training is kept for it"]


def test_another_registry_s_registration_is_kept_whole():
    other = registration(1, "run1", ["clean/a/green/2021-01.parquet"], registry="sqlite:////elsewhere/mlflow.db")
    keep, _ = retention.registration_needs([other], [], REGISTRY, [])
    assert keep == {"clean/a/green/2021-01.parquet": "registered in another registry, sqlite:////elsewhere/mlflow.db"}


def test_a_registration_without_needs_keeps_its_color_s_training_and_validation_months():
    paths = [layout.clean("green", 2021, 1, "a")["data"], layout.clean("green", 2021, 2, "a")["stats"],
             layout.clean("green", 2021, 3, "a")["data"], layout.clean("yellow", 2021, 1, "a")["data"],
             layout.run("green", 2021, 1, "b")["report.md"]]
    champion = retention.Aliased("green", "taxi-duration-green", 1, "run1", ("champion",))
    keep, _ = retention.registration_needs([registration(1, "run1", None)], [champion], REGISTRY, paths)
    assert sorted(keep) == sorted([paths[0], paths[1], paths[4]])


def stored(path: str, hours_old: float, size: int = 10) -> StoredFile:
    return StoredFile(path, size, NOW - hours_old * HOUR)


def test_each_file_is_kept_left_alone_or_stale():
    needed, unneeded = layout.clean("green", 2021, 1, "a")["data"], layout.clean("green", 2021, 1, "b")["data"]
    log = layout.task_log("CleanMonth", "CleanMonth_green_1_2021_ab", "20261206T091500Z-h-1")["log"]
    files = [stored(needed, 100, 7), stored(unneeded, 100, 5), stored(unneeded + ".new", 100),
             stored(unneeded + "-luigi-tmp-0123456789", 23.9), stored(unneeded + "-luigi-tmp-0987654321", 24.1),
             stored(layout.clean("green", 2021, 2, "b")["data"], 1), stored(log, 100)]
    plan = retention.sort_out(files, {needed: "why"}, NOW, 24)
    assert plan.kept == {needed: "why"} and plan.kept_bytes == 7
    assert [f.path for f in plan.stale] == [unneeded, unneeded + "-luigi-tmp-0987654321"]
    assert [f.path for f in plan.recent] == [unneeded + "-luigi-tmp-0123456789",
                                             layout.clean("green", 2021, 2, "b")["data"]]
    assert [f.path for f in plan.other] == [unneeded + ".new", log]
    assert [f.path for f in retention.sort_out(files, {}, NOW, 0).recent] == []


@pytest.mark.parametrize("keep_months,min_age_hours,message", [
    (-1, 24, "[gc] keep_months must be at least 0, got -1"),
    (12, -0.5, "[gc] min_age_hours must be at least 0, got -0.5")])
def test_negative_settings_are_refused(keep_months, min_age_hours, message):
    with pytest.raises(ValueError) as refused:
        retention.validate(keep_months, min_age_hours)
    assert str(refused.value) == message
