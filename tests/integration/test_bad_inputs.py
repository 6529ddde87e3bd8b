"""Bad parameters, bad source files and corrupt cached targets, as an operator meets them: `luigi --module
taxi.tasks ...` in a subprocess is rejected with a clear message and a non-zero exit code, writes no target for
the bad month and registers nothing. Zone ids outside 1..265 and a few non-finite distances are warned about, not
rejected. Each data-check setting of CleanMonth, and BuildFeatures' gate share, reaches the function it sets and
the target paths."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import luigi
import luigi.configuration
import pytest

from taxi import data, features, layout, tasks
from tests.support.flaky_http import FlakyMirror
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.paths import BIN
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.store import match, one_file, pattern

MONTH = ("--year", "2021", "--month", "1")
JANUARY = "green_tripdata_2021-01.parquet"
JANUARY_CLEAN_ROWS = 73_908  # green 2021-01 after the course's cleaning (tests/integration/test_data.py)
TODAY = dt.date.today()
LAST_MONTH = (TODAY.replace(day=1) - dt.timedelta(days=1))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def run_all(workdir: Path, config: Path, cases: dict[str, tuple[str, ...]]) -> dict[str, LuigiProcess]:
    """Start one luigi process per case at once, then wait for all (they share nothing but the config)."""
    runs = {name: LuigiProcess(workdir, config, *args, name=name) for name, args in cases.items()}
    for run in runs.values():
        run.finish(timeout=300)
    return runs


# ---------------------------------------------------------------------------------------------------------------
# Parameters: checked before any task runs.

PARAMETERS = {
    "month-0": (("RegisterModel", "--year", "2021", "--month", "0"), 40, "month must be 1..12, got 0"),
    "month-13": (("RegisterModel", "--year", "2021", "--month", "13"), 40, "month must be 1..12, got 13"),
    "year-2008": (("RegisterModel", "--year", "2008", "--month", "5"), 40,
                  f"year must be 2009..{TODAY.year}, got 2008"),
    "next-year": (("RegisterModel", "--year", str(TODAY.year + 1), "--month", "1"), 40,
                  f"year must be 2009..{TODAY.year}, got {TODAY.year + 1}"),
    "unknown-color": (("RegisterModel", *MONTH, "--color", "blue"), 40,
                      "unknown color 'blue': use one of green, yellow"),
    "max-evals-0": (("RegisterModel", *MONTH, "--TuneHyperparams-max-evals", "0"), 35,
                    "tuning setting max_evals must be at least 1, got 0"),
    "negative-rounds": (("RegisterModel", *MONTH, "--TuneHyperparams-num-boost-round", "-1"), 35,
                        "tuning setting num_boost_round must be at least 1, got -1"),
    "negative-download-retries": (("RegisterModel", *MONTH, "--taxi-download-retries", "-1"), 40,
                                  "[taxi] download_retries must be at least 0, got -1"),
    "validation-month-not-over": (
        ("RegisterModel", "--year", str(LAST_MONTH.year), "--month", str(LAST_MONTH.month)), 40,
        f"validation month {TODAY:%Y-%m} (the month after {LAST_MONTH:%Y-%m}) is not over yet, so it has no data"),
}


@pytest.fixture(scope="module")
def parameter_runs(tmp_path_factory, tlc_dir) -> tuple[Path, dict[str, LuigiProcess]]:
    workdir = tmp_path_factory.mktemp("bad-parameters")
    config = write_config(workdir / "bad.cfg", {
        "taxi": {"source": str(tlc_dir), "store": str(workdir / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db"},
        "TuneHyperparams": SMALL_TUNING,
        "core": private_lock(workdir),
    })
    return workdir, run_all(workdir, config, {name: args for name, (args, _, _) in PARAMETERS.items()})


@pytest.mark.parametrize("case", list(PARAMETERS))
def test_bad_parameter_is_rejected_before_any_task_runs(parameter_runs, case):
    _, runs = parameter_runs
    _, returncode, message = PARAMETERS[case]
    run = runs[case]
    assert run.proc.returncode == returncode  # [retcode] unhandled_exception (40) or scheduling_error (35)
    assert f"ValueError: {message}" in run.log
    assert " running " not in run.log


def test_bad_parameters_write_nothing_and_register_nothing(parameter_runs):
    workdir, _ = parameter_runs
    assert not (workdir / "store").exists()
    assert not (workdir / "mlflow.db").exists()


def test_failed_run_from_a_folder_without_luigi_cfg_exits_non_zero(tmp_path, tlc_dir):
    """The package reads the checkout's luigi.cfg from any working directory: `[retcode]` applies, so cron or systemd
    see the failure (Luigi alone reads only ./luigi.cfg, and a failed run would exit 0)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(tmp_path / "profile.cfg", {"taxi": {"source": str(tlc_dir), "store": str(tmp_path / "store")},
                                                     "core": private_lock(tmp_path)})
    done = subprocess.run([str(BIN / "luigi"), "--module", "taxi.tasks", "DownloadMonth", "--year", "2020", "--month",
                           "5", "--local-scheduler"], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
    assert done.returncode == 30, done.stderr[-3000:]  # [retcode] task_failed
    assert "green 2020-05: " in done.stderr and "does not exist: the month is not in the mirror" in done.stderr
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# Source files: a mirror serves a bad January (and the real February) for each case.


def html_error_page(_: pa.Table) -> bytes:
    """What a proxy in front of the source sends, saved under the month's name."""
    return b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"


def truncated(table: pa.Table) -> bytes:
    whole = parquet_bytes(table)
    return whole[: len(whole) // 2]


def without(*columns: str):
    def build(table: pa.Table) -> bytes:
        return parquet_bytes(table.drop_columns(list(columns)))
    return build


def dropoff_shifted(by: dt.timedelta):
    """Every dropoff at pickup + `by`: two hours is over the 60 minute limit, a negative shift is before pickup."""
    def build(table: pa.Table) -> bytes:
        pickup = table["lpep_pickup_datetime"]
        shifted = pc.add(pickup, pa.scalar(by, pa.duration("us")).cast(pa.duration(pickup.type.unit)))
        index = table.column_names.index("lpep_dropoff_datetime")
        return parquet_bytes(table.set_column(index, "lpep_dropoff_datetime", shifted))
    return build


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


BAD_FILES = {  # case: (January's bytes from the real January, failing task, message)
    "html-error-page": (html_error_page, "DownloadMonth", "is not a readable parquet file"),
    "truncated-parquet": (truncated, "DownloadMonth", "is not a readable parquet file"),
    "no-trip-distance": (without("trip_distance"), "DownloadMonth",
                         "lacks required column(s) trip_distance for green trips"),
    "no-datetimes": (without("lpep_pickup_datetime", "lpep_dropoff_datetime"), "DownloadMonth",
                     "lacks required column(s) lpep_dropoff_datetime, lpep_pickup_datetime for green trips"),
    "every-trip-over-an-hour": (dropoff_shifted(dt.timedelta(hours=2)), "CleanMonth", "no trips left after cleaning"),
    "dropoff-before-pickup": (dropoff_shifted(dt.timedelta(minutes=-5)), "CleanMonth", "no trips left after cleaning"),
}


@pytest.fixture(scope="module")
def bad_file_runs(tmp_path_factory, tlc_dir) -> Iterator[tuple[Path, dict[str, LuigiProcess], str]]:
    """RegisterModel once per bad January, all at once, each with its own store and MLflow database."""
    workdir = tmp_path_factory.mktemp("bad-files")
    table = pq.read_table(tlc_dir / JANUARY)
    for case, (build, _, _) in BAD_FILES.items():
        (workdir / "mirror" / case).mkdir(parents=True)
        (workdir / "mirror" / case / JANUARY).write_bytes(build(table))
        (workdir / "mirror" / case / "green_tripdata_2021-02.parquet").symlink_to(
            tlc_dir / "green_tripdata_2021-02.parquet")
    with FlakyMirror(workdir / "mirror") as mirror:
        runs = {}
        for case in BAD_FILES:
            config = write_config(workdir / f"{case}.cfg", {
                "taxi": {"source": f"{mirror.url}/{case}", "store": str(workdir / case / "store")},
                "mlflow": {"tracking_uri": f"sqlite:///{workdir / case}/mlflow.db"},
                "TuneHyperparams": SMALL_TUNING,
                "core": private_lock(workdir / case),
            })
            runs[case] = LuigiProcess(workdir, config, "RegisterModel", *MONTH, name=case)
        for run in runs.values():
            run.finish(timeout=300)
        yield workdir, runs, mirror.url


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_source_file_fails_its_task_with_a_clear_message_and_writes_nothing_downstream(bad_file_runs, case):
    workdir, runs, url = bad_file_runs
    _, failing_task, message = BAD_FILES[case]
    run = runs[case]
    assert run.proc.returncode == 30  # [retcode] task_failed
    assert f"failed    {failing_task}(color=green, year=2021, month=1" in run.log
    line = next(line for line in run.log.splitlines() if line.startswith("taxi.data.DataError: "))
    assert message in line and "2021-01" in line  # one line: what is wrong, and with which month's file
    if failing_task == "DownloadMonth":
        assert f"downloaded file {url}/{case}/{JANUARY}" in line
    stored = files_under(workdir / case / "store")
    raw_january = [pattern(t, color="green", ym="2021-01") for t in (layout.RAW, layout.RAW_META)]
    february = [pattern(t, color="green", ym="2021-02")
                for t in (layout.CLEAN, layout.CLEAN_STATS, layout.RAW, layout.RAW_META)]
    # the good month goes on; of the bad one only a correct download may stay (cleaning rejected it)
    assert match(stored, february + (raw_january if failing_task == "CleanMonth" else [])), stored
    assert not (workdir / case / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------------------------
# Suspicious but usable rows: warned about, then dropped (non-finite distance) or kept (unknown zones).


@pytest.fixture(scope="module")
def odd_rows(tmp_path_factory, tlc_dir) -> tuple[Path, dict[str, LuigiProcess]]:
    """CleanMonth on a January with 100 NaN and 50 inf distances, and on one with 40 pickups in zone 300 and 30
    dropoffs in zone 0, all among trips cleaning would otherwise keep."""
    workdir = tmp_path_factory.mktemp("odd-rows")
    trips = pd.read_parquet(tlc_dir / JANUARY)
    minutes = (trips["lpep_dropoff_datetime"] - trips["lpep_pickup_datetime"]).dt.total_seconds() / 60
    kept = np.flatnonzero(minutes.between(1, 60).to_numpy() & np.isfinite(trips["trip_distance"].to_numpy()))
    picked = np.random.default_rng(7).choice(kept, 220, replace=False)
    distances, zones = trips.copy(), trips.copy()
    distances.loc[picked[:100], "trip_distance"] = np.nan
    distances.loc[picked[100:150], "trip_distance"] = np.inf
    zones.loc[picked[150:190], "PULocationID"] = 300
    zones.loc[picked[190:], "DOLocationID"] = 0
    cases = {"nonfinite-distances": distances, "zones-outside-1-265": zones}
    for case, frame in cases.items():
        (workdir / "mirror" / case).mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), workdir / "mirror" / case / JANUARY)
    runs = {}
    for case in cases:
        config = write_config(workdir / f"{case}.cfg", {"taxi": {"source": str(workdir / "mirror" / case),
                                                                  "store": str(workdir / case)},
                                                         "core": private_lock(workdir / case)})
        runs[case] = LuigiProcess(workdir, config, "CleanMonth", *MONTH, name=case)
    for run in runs.values():
        run.finish(timeout=300)
    return workdir, runs


def test_nonfinite_distances_are_dropped_with_a_warning(odd_rows):
    workdir, runs = odd_rows
    run = runs["nonfinite-distances"]
    assert run.proc.returncode == 0, run.log[-3000:]
    assert "dropped 150 trips with a missing or infinite trip_distance" in run.log
    store = workdir / "nonfinite-distances"
    stats = json.loads(one_file(store, layout.CLEAN_STATS, color="green", ym="2021-01").read_text())
    assert (stats["dropped_nonfinite_distance"], stats["rows_clean"]) == (150, JANUARY_CLEAN_ROWS - 150)
    cleaned = pd.read_parquet(one_file(store, layout.CLEAN, color="green", ym="2021-01"))
    assert np.isfinite(cleaned["trip_distance"]).all() and len(cleaned) == JANUARY_CLEAN_ROWS - 150


def test_zone_ids_outside_1_to_265_are_warned_about_and_kept(odd_rows):
    workdir, runs = odd_rows
    run = runs["zones-outside-1-265"]
    assert run.proc.returncode == 0, run.log[-3000:]
    assert "70 zone ids outside 1..265 (kept as their own categories)" in run.log
    store = workdir / "zones-outside-1-265"
    stats = json.loads(one_file(store, layout.CLEAN_STATS, color="green", ym="2021-01").read_text())
    assert (stats["unknown_zone_rows"], stats["rows_clean"]) == (70, JANUARY_CLEAN_ROWS)
    cleaned = pd.read_parquet(one_file(store, layout.CLEAN, color="green", ym="2021-01"))
    assert ((cleaned["PULocationID"] == "300").sum(), (cleaned["DOLocationID"] == "0").sum()) == (40, 30)


# ---------------------------------------------------------------------------------------------------------------
# Corrupt cached targets: a truncated parquet fails the completeness check; a truncated matrix is named on read.


@pytest.fixture(scope="module")
def features_store(tmp_path_factory, tlc_dir) -> tuple[Path, Path]:
    """A store with BuildFeatures for green 2021-01 complete; returns (workdir, config)."""
    workdir = tmp_path_factory.mktemp("corrupt")
    config = write_config(workdir / "corrupt.cfg", {
        "taxi": {"source": str(tlc_dir), "store": str(workdir / "store")},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db"},
        "TuneHyperparams": SMALL_TUNING,
        "core": private_lock(workdir),
    })
    built = run_luigi(workdir, config, "BuildFeatures", *MONTH)
    assert built.returncode == 0, built.stderr[-3000:]
    return workdir, config


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])


def test_truncated_cached_parquets_fail_the_completeness_check_and_are_rebuilt(features_store, tlc_dir):
    workdir, config = features_store
    store = workdir / "store"
    raw, clean = (one_file(store, template, color="green", ym="2021-02") for template in (layout.RAW, layout.CLEAN))
    truncate(raw)
    truncate(clean)
    rerun = run_luigi(workdir, config, "CleanMonth", "--year", "2021", "--month", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 ran successfully" in rerun.stderr
    assert raw.read_bytes() == (tlc_dir / "green_tripdata_2021-02.parquet").read_bytes()
    assert pq.read_metadata(clean).num_rows == 61_921


def test_truncated_feature_matrix_is_named_on_read_and_rebuilt_once_deleted(features_store):
    workdir, config = features_store
    matrix = one_file(workdir / "store", layout.FEATURES, color="green", ym="2021-01", name="train.npz")
    truncate(matrix)
    failed = run_luigi(workdir, config, "TuneHyperparams", *MONTH)
    assert failed.returncode == 30
    assert f"CorruptTarget: cached target {matrix} is unreadable (" in failed.stderr
    assert "delete it and rerun to rebuild it" in failed.stderr
    assert not (workdir / "store/tuning").exists() and not (workdir / "mlflow.db").exists()
    matrix.unlink()
    rebuilt = run_luigi(workdir, config, "BuildFeatures", *MONTH)
    assert rebuilt.returncode == 0 and "1 ran successfully" in rebuilt.stderr
    X, y = features.load_matrix(str(matrix))
    assert X.shape[0] == len(y) == JANUARY_CLEAN_ROWS


# ---------------------------------------------------------------------------------------------------------------
# Settings: each reaches the function it sets, and the paths of what it changes.

SLACK_HOURS = 12  # the crafted January's early pickups: this long before the month starts
EARLY_SHARE = 0.03  # of its cleaned trips
CHECK_SETTINGS = {  # CleanMonth setting: (a value the month fails with, the check that fails, the share it allows)
    "max_drop_share": ("0.03", "rows dropped by cleaning", "3"),  # cleaning drops 3.4 % of January's rows
    "max_failing_share": ("0.0005", "trip_distance in 0..100 miles", "0.05"),  # 0.1 % of its trips are longer
    "max_distance": ("10", "trip_distance in 0..10 miles", "1"),  # 11.7 % of its trips are longer than 10 miles
    "pickup_slack_days": ("0.25", "pickup_datetime in the file's month ± 0.25 days", "1"),  # the early pickups
}


def early_pickups(table: pa.Table) -> pa.Table:
    """January with EARLY_SHARE of the trips cleaning keeps picked up SLACK_HOURS before the month, each as long as
    it was: inside the default slack of a day, outside a quarter of one."""
    trips = table.to_pandas()
    pickup, dropoff = trips["lpep_pickup_datetime"], trips["lpep_dropoff_datetime"]
    minutes = (dropoff - pickup).dt.total_seconds() / 60
    kept = np.flatnonzero(minutes.between(1, 60).to_numpy() & np.isfinite(trips["trip_distance"].to_numpy()))
    moved = np.random.default_rng(5).choice(kept, round(EARLY_SHARE * len(kept)), replace=False)
    early = pd.Timestamp(2021, 1, 1) - pd.Timedelta(hours=SLACK_HOURS)
    trips.loc[moved, "lpep_dropoff_datetime"] = early + (dropoff[moved] - pickup[moved])
    trips.loc[moved, "lpep_pickup_datetime"] = early
    return pa.Table.from_pandas(trips, schema=table.schema, preserve_index=False)


@pytest.fixture(scope="module")
def check_setting_runs(tmp_path_factory, tlc_dir) -> tuple[Path, dict[str, LuigiProcess]]:
    """CleanMonth of the crafted January with the default settings, and once per setting with the value it fails
    with, all at once, each with its own store."""
    workdir = tmp_path_factory.mktemp("check-settings")
    (workdir / "mirror").mkdir()
    pq.write_table(early_pickups(pq.read_table(tlc_dir / JANUARY)), workdir / "mirror" / JANUARY)
    runs = {}
    for case in ("defaults", *CHECK_SETTINGS):
        config = write_config(workdir / f"{case}.cfg", {"taxi": {"source": str(workdir / "mirror"),
                                                                  "store": str(workdir / case)},
                                                         "core": private_lock(workdir / case)})
        args = () if case == "defaults" else (f"--{case.replace('_', '-')}", CHECK_SETTINGS[case][0])
        runs[case] = LuigiProcess(workdir, config, "CleanMonth", *MONTH, *args, name=case)
    for run in runs.values():
        run.finish(timeout=300)
    return workdir, runs


def test_the_crafted_month_passes_every_check_with_the_default_settings(check_setting_runs):
    workdir, runs = check_setting_runs
    assert runs["defaults"].proc.returncode == 0, runs["defaults"].log[-3000:]
    stats = json.loads(one_file(workdir / "defaults", layout.CLEAN_STATS, color="green", ym="2021-01").read_text())
    cleaned = pd.read_parquet(one_file(workdir / "defaults", layout.CLEAN, color="green", ym="2021-01"))
    early = (cleaned[data.PICKUP] < pd.Timestamp(2021, 1, 1) - pd.Timedelta(hours=SLACK_HOURS - 1)).mean()
    assert early == pytest.approx(EARLY_SHARE, abs=1e-4)  # the early pickups are in, within the day's slack
    assert stats["rows_clean"] == len(cleaned) == JANUARY_CLEAN_ROWS


@pytest.mark.parametrize("setting", list(CHECK_SETTINGS))
def test_each_check_setting_reaches_its_check(check_setting_runs, setting):
    """The month passes with the defaults: it fails only if the setting reached the check, which says so."""
    workdir, runs = check_setting_runs
    _, check, allowed = CHECK_SETTINGS[setting]
    run = runs[setting]
    assert run.proc.returncode == 30, run.log[-3000:]  # [retcode] task_failed
    line = next(line for line in run.log.splitlines() if line.startswith("taxi.checks.CheckFailed: "))
    assert f": check failed: {check}: " in line and line.endswith(f"(at most {allowed}% may); the month's data looks "
                                                                 f"wrong: fix the source, or change the [CleanMonth] "
                                                                 f"check settings"), line
    assert files_under(workdir / setting / "clean") == []


def test_each_check_setting_is_in_the_cleaned_month_s_paths(luigi_config):
    """A cleaned month made with other check settings is another target: changing one never reuses the old one."""
    settings = {name for name, _ in tasks.CleanMonth.get_params()} - {"color", "year", "month"}
    assert settings == set(CHECK_SETTINGS)  # a new setting needs its cases above
    default = tasks.CleanMonth(year=2021, month=1).output()
    for name, (value, _, _) in CHECK_SETTINGS.items():
        changed = tasks.CleanMonth(year=2021, month=1, **{name: float(value)}).output()
        assert changed.keys() == default.keys()
        for key in default:
            assert changed[key].path != default[key].path, (name, key)


def test_the_gate_share_reaches_the_split_of_the_validation_month(luigi_config, sampled_tlc):
    """BuildFeatures with gate_share 0.3 keeps the other 70 % of February's trips, by the split recomputed here."""
    luigi.configuration.get_config().set("taxi", "source", str(sampled_tlc))
    task = tasks.BuildFeatures(year=2021, month=1, gate_share=0.3)
    assert luigi.build([task], local_scheduler=True, workers=1)
    valid = pd.read_parquet(task.input()["valid"]["data"].path)
    _, _, _, X_valid, y_valid = tasks.load_features(task.output())
    selection = ~data.gate_rows(valid, 0.3)
    assert 0.67 < selection.mean() < 0.73 and X_valid.shape[0] == selection.sum()
    np.testing.assert_array_equal(y_valid, valid["duration"].to_numpy()[selection])
