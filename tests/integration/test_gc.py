"""scripts/gc on real stores after real runs: a local folder with a sqlite registry, and a real S3 server (SeaweedFS).
Each store holds a month registered with settings A (rejected), with the cleaning changed (B: the champion, and its
scoring), and, locally, with the feature set changed (C: held) and a newer month cleaned. The stale files are
computed here from the store's listings before and after each run, never by taxi's own functions."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
from mlflow.tracking import MlflowClient

from taxi.registry import model_name
from tests.integration.test_s3 import own_lock, ran_tasks
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.s3server import SeaweedS3

JANUARY, FEBRUARY = ("--year", "2021", "--month", "1"), ("--year", "2021", "--month", "2")
MODEL = model_name("green")
STALE_LINE = re.compile(r"^ +[\d,]+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (\S+)$")
REJECT_ALL = {"max_rmse": "0.5"}  # settings A: every model's gate RMSE is above it, so v1 gets no alias
CLEANING_B = {"max_distance": "50"}  # settings B: a cache-key change of CleanMonth, so every keyed target moves
FEATURES_C = {"feature_set": "course"}  # settings C: another input contract, so v3 is held (no alias)
NOTHING_RAN = "complete ones were encountered:"  # Luigi's summary of a run whose tasks were all done already


def gc(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """scripts/gc as an operator runs it, with the profile `config`."""
    return subprocess.run([str(ROOT / "scripts" / "gc"), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config), **(env or {})})


def listed(stdout: str) -> set[str]:
    """The stale paths scripts/gc lists."""
    return {found[1] for line in stdout.splitlines() if (found := STALE_LINE.match(line))}


def succeeded(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@dataclasses.dataclass
class History:
    """A store and registry after the runs, and what each run added to the store (path -> mtime or ETag)."""

    workdir: Path
    configs: dict[str, Path]
    snapshots: dict[str, dict[str, object]]  # after each step: the store's listing
    files: Callable[[], dict[str, object]]  # the store's listing now
    env: dict[str, str]

    def added(self, step: str, before: str) -> set[str]:
        return set(self.snapshots[step]) - set(self.snapshots[before])

    def run(self, settings: str, *args: str) -> subprocess.CompletedProcess:
        return succeeded(run_luigi(self.workdir, self.configs[settings], *args, env=self.env, timeout=600))


def make_history(workdir: Path, taxi: dict[str, str], files, env: dict[str, str], extra: dict | None = None,
                 feature_change: bool = True) -> History:
    """Run A, B (and C) in `workdir` against a sqlite registry there, snapshotting the store after each."""
    base = {"taxi": taxi, "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db",
                                     "artifact_location": str(workdir / "mlartifacts")},
            "TuneHyperparams": SMALL_TUNING, "core": own_lock(workdir), **(extra or {})}
    configs = {"A": write_config(workdir / "a.cfg", {**base, "RegisterModel": REJECT_ALL}),
               "B": write_config(workdir / "b.cfg", {**base, "CleanMonth": CLEANING_B}),
               "C": write_config(workdir / "c.cfg", {**base, "CleanMonth": CLEANING_B, "BuildFeatures": FEATURES_C})}
    history = History(workdir, configs, {}, files, env)
    history.run("A", "RegisterModel", *JANUARY)
    history.snapshots["A"] = files()
    history.run("B", "RegisterModel", *JANUARY)
    history.run("B", "ScoreMonth", *FEBRUARY)
    history.snapshots["B"] = files()
    if feature_change:
        history.run("C", "RegisterModel", *JANUARY)
        history.run("C", "CleanMonth", "--year", "2023", "--month", "1")
        history.snapshots["C"] = files()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    decisions = {int(v.version): json.loads(v.tags["taxi.decision"])["decision"]
                 for v in client.search_model_versions(f"name='{MODEL}'")}
    assert decisions == {1: "rejected", 2: "champion", 3: "held"} if feature_change else {1: "rejected", 2: "champion"}
    assert {alias: int(v) for alias, v in client.get_registered_model(MODEL).aliases.items()} == {"champion": 2}
    return history


def local_listing(store: Path):
    def files() -> dict[str, float]:
        return {path.relative_to(store).as_posix(): path.stat().st_mtime_ns for path in store.rglob("*")
                if path.is_file()}
    return files


@pytest.fixture(scope="module")
def local(tmp_path_factory, sampled_tlc) -> History:
    workdir = tmp_path_factory.mktemp("gc-local")
    store = workdir / "data"
    return make_history(workdir, {"store": str(store), "source": str(sampled_tlc)}, local_listing(store), {})


def test_dry_run_lists_what_only_the_replaced_settings_made_and_delete_removes_exactly_that(local):
    """After A (v1 rejected) then B (the cleaning changed: v2 champion, February scored) then C (the feature set
    changed: v3 held): what A made is stale but the raw months, which B needs too; B's targets stay, needed by the
    champion v2 although C is the current setting; C's stay, the current settings' in the newest months."""
    before = local.files()
    stale = made_by_a(local)
    assert len(stale) == 17  # clean x4, features x3, tuning, run x9

    dry = succeeded(gc(local.configs["C"], "--min-age-hours", "0"))
    assert listed(dry.stdout) == stale
    assert "dry run: nothing deleted; scripts/gc --delete deletes the 17 stale files" in dry.stdout
    assert local.files() == before

    deleted = succeeded(gc(local.configs["C"], "--min-age-hours", "0", "--delete"))
    assert listed(deleted.stdout) == stale and "deleted 17 stale files" in deleted.stdout
    after = local.files()
    assert set(after) == set(before) - stale
    assert after == {path: mtime for path, mtime in before.items() if path not in stale}  # kept files untouched
    assert listed(succeeded(gc(local.configs["C"], "--min-age-hours", "0")).stdout) == set()
    client = MlflowClient(f"sqlite:///{local.workdir}/mlflow.db")  # the registry as it was: gc touches the store only
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 3
    assert {alias: int(v) for alias, v in client.get_registered_model(MODEL).aliases.items()} == {"champion": 2}

    # the champion's month and its scoring still complete, without running anything again
    for settings, args in (("B", ("RegisterModel", *JANUARY)), ("C", ("ScoreMonth", *FEBRUARY))):
        again = local.run(settings, *args)
        assert ran_tasks(again.stderr) == set() and NOTHING_RAN in again.stderr, again.stderr[-3000:]
    assert local.files() == after


def made_by_a(history: History) -> set[str]:
    """What settings A made that B does not make again: all but the raw months and the store's record of its
    registry."""
    return {path for path in history.snapshots["A"] if not path.startswith("raw/") and path != "registry.json"}


def test_only_the_newest_months_keep_the_current_settings_targets(local):
    """With one month kept (2023-01, the newest the store has), what C made for 2021-01 is stale too: the held v3
    has no alias; the champion v2's targets of 2021-01 and 2021-02 stay, and so do 2023-01's; with none kept, only
    the champion's."""
    left_by_a = made_by_a(local) & set(local.files())  # none once the test above deleted them
    made_by_c = {path for path in local.added("C", "B") if "2023-01" not in path}
    newest = {path for path in local.added("C", "B") if "2023-01" in path}
    assert len(made_by_c) == 13 and len(newest) == 4  # features x3, tuning, run x9; raw x2, clean x2
    one = succeeded(gc(local.configs["C"], "--min-age-hours", "0", "--keep-months", "1"))
    assert listed(one.stdout) == made_by_c | left_by_a
    with_settings = local.configs["C"].with_name("c-keep-1.cfg")
    with_settings.write_text(local.configs["C"].read_text() + "[gc]\nkeep_months = 1\nmin_age_hours = 0\n")
    assert listed(succeeded(gc(with_settings)).stdout) == made_by_c | left_by_a
    none = succeeded(gc(local.configs["C"], "--min-age-hours", "0", "--keep-months", "0"))
    assert listed(none.stdout) == made_by_c | newest | left_by_a


def test_recent_files_and_luigi_temporaries_are_left_alone_until_old(local):
    """A temporary that Luigi is writing, and any unneeded file modified within [gc] min_age_hours, are never
    listed or deleted; a temporary a killed run left days ago is stale."""
    store = local.workdir / "data"
    cleaned = next(path for path in local.added("B", "A") if path.startswith("clean/"))
    writing, killed = store / f"{cleaned}-luigi-tmp-0123456789", store / f"{cleaned}-luigi-tmp-0987654321"
    writing.write_bytes(b"half a parquet file")
    killed.write_bytes(b"what a killed run left")
    two_days_ago = time.time() - 2 * 86400
    os.utime(killed, (two_days_ago, two_days_ago))
    unneeded = ({path for path in local.added("C", "B") if "2023-01" not in path}
                | made_by_a(local)) & set(local.files())  # all modified today

    done = succeeded(gc(local.configs["C"], "--keep-months", "1", "--delete"))
    assert listed(done.stdout) == {killed.relative_to(store).as_posix()}
    assert f"left alone: {len(unneeded) + 1} unneeded files modified in the last 24 hours" in done.stdout
    assert writing.exists() and not killed.exists()
    assert unneeded <= set(local.files())
    writing.unlink()


def test_bad_settings_and_an_unreachable_registry_fail_clearly_and_delete_nothing(local, tmp_path):
    before = local.files()
    bad = gc(local.configs["C"], "--keep-months", "-1", "--delete")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "ERROR: taxi.retention: [gc] keep_months must be at least 0, got -1; nothing was deleted"]
    down = tmp_path / "down.cfg"
    down.write_text(re.sub(r"tracking_uri = .*", "tracking_uri = http://127.0.0.1:9", local.configs["C"].read_text()))
    unreachable = gc(down, "--min-age-hours", "0", "--delete")
    assert unreachable.returncode == 1
    assert ("MLflow tracking server http://127.0.0.1:9 is not reachable (ConnectionError); start it "
            "(scripts/services start) or set [mlflow] tracking_uri / MLFLOW_TRACKING_URI; nothing was deleted"
            in unreachable.stderr)
    other = tmp_path / "other.cfg"
    other.write_text(re.sub(r"tracking_uri = .*", f"tracking_uri = sqlite:///{tmp_path}/other.db",
                            local.configs["C"].read_text()))
    refused = gc(other, "--min-age-hours", "0", "--delete")
    assert refused.returncode == 1
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("ERROR: ")]
    assert f"but this is the registry at sqlite:///{tmp_path}/other.db (no experiment taxi-duration there)" in line
    assert line.endswith("nothing was deleted")
    assert local.files() == before


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> SeaweedS3:
    server = SeaweedS3(tmp_path_factory.mktemp("gc-seaweedfs")).start()
    yield server
    server.stop()


def test_an_s3_store_is_collected_like_a_folder(tmp_path, s3, sampled_tlc):
    """The same A then B on an S3 store: the dry run lists what A made but the raw months, --delete removes exactly
    those objects, and the champion's month and its scoring still complete with every kept object as it was."""
    s3.create_bucket("retention")
    listing = lambda: {key.removeprefix("store/"): etag for key, etag in s3.keys("retention", "store/").items()}  # noqa: E731
    history = make_history(tmp_path, {"store": "s3://retention/store", "source": str(sampled_tlc)}, listing, s3.env,
                           extra={"s3": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"}},
                           feature_change=False)
    before = listing()
    stale = made_by_a(history)
    assert len(stale) == 17

    dry = succeeded(gc(history.configs["B"], "--min-age-hours", "0", env=s3.env))
    assert listed(dry.stdout) == stale and listing() == before
    succeeded(gc(history.configs["B"], "--min-age-hours", "0", "--delete", env=s3.env))
    after = listing()
    assert after == {path: etag for path, etag in before.items() if path not in stale}

    for args in (("RegisterModel", *JANUARY), ("ScoreMonth", *FEBRUARY)):
        again = history.run("B", *args)
        assert ran_tasks(again.stderr) == set() and NOTHING_RAN in again.stderr, again.stderr[-3000:]
    assert listing() == after
