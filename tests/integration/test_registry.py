"""The champion decision, right under every failure: a real challenger, a rerun after a crash that followed the alias
move, a registry that answers 500 at the champion lookup, two registrations at the same moment (through a proxy that
forces the worst interleaving), and two processes that create a new sqlite tracking database at once.

The data is `sampled_tlc`: 8000 real trips of each green month; 2023-01's distances are shuffled, so its model is
worse than 2021-01's on either validation month.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import luigi
import luigi.configuration
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from taxi import data, metrics, promotion, registry, storage, tasks, tracking
from tests.support.http_proxy import CHAMPION_LOOKUP, SET_ALIAS, Proxy
from tests.support.luigi_process import DECIDING, HOLDING, LuigiProcess, private_lock
from tests.support.paths import ROOT
from tests.support.runs import SAMPLE_ROWS, SMALL_TUNING, run_luigi, sample_month, write_config
from tests.support.services import luigid_service, mlflow_service
from tests.support.store import raw_rows

MODEL = registry.model_name("green")
GOOD, WORSE = ("2021", "1"), ("2023", "1")  # WORSE trains on shuffled distances
HELD_DECISION = "tests.support.held_decision"
ONE_TREE = {"max_evals": "1", "num_boost_round": "1"}  # a budget that cannot beat SMALL_TUNING


def configure_tuning(**tuning: str) -> None:
    """SMALL_TUNING changed by `tuning`, for the tasks made from now on (the settings are TuneHyperparams'
    parameters, so each setting has its own cache key and model folder)."""
    config = luigi.configuration.get_config()
    for key, value in {**SMALL_TUNING, "seed": "42", **tuning}.items():
        config.set("TuneHyperparams", key, value)


def register_in_process(**tuning: str) -> tuple[dict, dict]:
    """RegisterModel for green 2021-01 with SMALL_TUNING changed by `tuning`: (its outputs, its registration)."""
    configure_tuning(**tuning)
    task = tasks.RegisterModel(year=2021, month=1)
    result = luigi.build([task], local_scheduler=True, detailed_summary=True)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return task.output(), storage.read_json(task.output()["registration.json"])


def aliases(client: MlflowClient) -> dict[str, int]:
    return {alias: int(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


def decisions(registration: dict) -> tuple:
    return registration["version"], registration["decision"], registration["previous_champion_version"]


def rescored(client: MlflowClient, version: int, store: Path, valid_month: str = "2021-02") -> float:
    """The RMSE the test gets itself from registered `version` on the gate rows of a validation month."""
    [path] = store.glob(f"clean/*/green/{valid_month}.parquet")
    valid = pd.read_parquet(path)
    gate = valid[data.gate_rows(valid, 0.5)]
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    return metrics.rmse(gate["duration"], model.predict(raw_rows(gate)))


def test_gate_makes_a_worse_model_challenger_and_a_better_one_champion(luigi_config, sampled_tlc):
    luigi.configuration.get_config().set("taxi", "source", str(sampled_tlc))
    luigi.configuration.get_config().set("RegisterModel", "max_rmse", "60")  # one tree is not a model to reject
    try:
        gate_decides(luigi_config)
    finally:
        luigi.configuration.get_config().remove_option("RegisterModel", "max_rmse")


def gate_decides(luigi_config) -> None:
    client = MlflowClient(luigi_config["mlflow"]["tracking_uri"])
    store = Path(luigi_config["taxi"]["store"])
    _, first = register_in_process(**ONE_TREE)
    assert decisions(first) == (1, "champion", None)

    _, better = register_in_process()
    assert better["gate_rmse"] < first["gate_rmse"] * 0.995  # the premise: twenty rounds beat one tree by the margin
    assert decisions(better) == (2, "champion", 1)
    # both scored by the test itself on the gate rows
    assert better["gate_rmse"] == pytest.approx(rescored(client, 2, store), rel=1e-9)
    assert better["previous_champion_gate_rmse"] == pytest.approx(rescored(client, 1, store), rel=1e-9)

    worse_outputs, worse = register_in_process(**ONE_TREE, seed="7")
    assert worse["gate_rmse"] == pytest.approx(rescored(client, 3, store), rel=1e-9)
    assert worse["gate_rmse"] > better["gate_rmse"]
    assert decisions(worse) == (3, "challenger", 2)
    assert worse["previous_champion_gate_rmse"] == pytest.approx(rescored(client, 2, store), rel=1e-9)
    assert aliases(client) == {"champion": 2, "challenger": 3}
    report = open(worse_outputs["report.md"].path).read()
    assert report.startswith(f"# {MODEL} v3: challenger\n")
    assert (f"Decision: **challenger**: {worse['gate_rmse']:.2f} vs {better['gate_rmse']:.2f}, "
            f"+{100 * (worse['gate_rmse'] / better['gate_rmse'] - 1):.1f} % does not beat the 0.5 % margin.") in report

    # a crash after the alias moved, before the outputs were written: the rerun reports what the decision compared
    # with, not the version itself, and moves no alias
    for tuning, registration in (({}, better), ({**ONE_TREE, "seed": "7"}, worse)):
        configure_tuning(**tuning)
        for target in tasks.RegisterModel(year=2021, month=1).output().values():
            os.remove(target.path)
        assert register_in_process(**tuning)[1] == registration
    assert aliases(client) == {"champion": 2, "challenger": 3}
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 3


def test_a_model_with_another_input_contract_is_held_until_an_operator_accepts_it(luigi_config, sampled_tlc):
    """A champion of the course's feature set takes zones and distance; a clock model also wants the pickup time.
    Clients pinned to the alias must not get a model that rejects their rows: the better clock model is held, the
    champion keeps serving three-column rows, and `--accept-contract-change true` promotes it on purpose."""
    config = luigi.configuration.get_config()
    config.set("taxi", "source", str(sampled_tlc))
    client = MlflowClient(luigi_config["mlflow"]["tracking_uri"])
    store = Path(luigi_config["taxi"]["store"])
    config.set("BuildFeatures", "feature_set", "course")
    try:
        _, course = register_in_process(search_space="lossguide")
    finally:
        config.remove_option("BuildFeatures", "feature_set")
    assert decisions(course) == (1, "champion", None) and course["feature_set"] == "course"
    assert course["inputs"] == ["PULocationID (any)", "DOLocationID (any)", "trip_distance (double)"]

    _, clock = register_in_process()
    assert len(list(store.glob("features/*/green/2021-01/train.npz"))) == 2  # each set its own key
    assert decisions(clock) == (2, "held", 1) and clock["inputs"][-1] == "lpep_pickup_datetime (any)"
    assert clock["reason"] == "held: input contract differs from champion v1's (adds lpep_pickup_datetime (any))"
    assert aliases(client) == {"champion": 1}
    mlflow.set_tracking_uri(client.tracking_uri)
    pinned = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert len(pinned.predict(pd.DataFrame([{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.0}]))) == 1

    config.set("RegisterModel", "accept_contract_change", "true")
    try:
        _, accepted = register_in_process()
    finally:
        config.remove_option("RegisterModel", "accept_contract_change")
    assert (accepted["version"], accepted["accept_contract_change"], accepted["previous_champion_version"]) == (
        2, True, 1)
    expected = "champion" if rescored(client, 2, store) < rescored(client, 1, store) * 0.995 else "challenger"
    assert accepted["decision"] == expected and aliases(client)[expected] == 2
    assert accepted["reason"].endswith("; input contract change accepted (adds lpep_pickup_datetime (any))")
    assert json.loads(client.get_model_version(MODEL, "2").tags[registry.DECISION_TAG])["accept_contract_change"]
    # the promotion in the alias history, with the flag it was made with (a key per move, sorted by time)
    tags = client.get_registered_model(MODEL).tags
    moves = [json.loads(tags[key]) for key in sorted(tags) if key.startswith("taxi.alias_history.")]
    assert [(m["alias"], m["from"], m["to"], m.get("accepted")) for m in moves] == [
        ("champion", None, 1, None), (expected, 1 if expected == "champion" else None, 2, ["accept_contract_change"])]
    assert moves[-1]["why"] == accepted["reason"] and moves[-1]["via"] == "pipeline"


@pytest.fixture
def proxied_mlflow(tmp_path):
    """A fresh real `mlflow server` and a proxy in front of it; yields (proxy, client of the server itself)."""
    server = mlflow_service(tmp_path / "mlflow").start()
    try:
        with Proxy(server.url) as proxy:
            yield proxy, MlflowClient(server.url)
    finally:
        server.stop()


def proxied_config(workdir: Path, source: Path, proxy: Proxy) -> Path:
    return write_config(workdir / "proxied.cfg", {
        "taxi": {"source": str(source), "store": str(workdir / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": proxy.url},
        "TuneHyperparams": SMALL_TUNING,
        "core": private_lock(workdir),
    })


def test_registry_error_at_the_champion_lookup_fails_the_task_and_moves_no_alias(tmp_path, sampled_tlc,
                                                                                proxied_mlflow):
    proxy, client = proxied_mlflow
    config = proxied_config(tmp_path, sampled_tlc, proxy)
    month = ("RegisterModel", "--year", GOOD[0], "--month", GOOD[1])
    assert run_luigi(tmp_path, config, *month).returncode == 0

    proxy.fail("GET", CHAMPION_LOOKUP, 500)
    warm = run_luigi(tmp_path, config, *month, "--TuneHyperparams-seed", "8",
                     env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    [error] = [line for line in warm.stderr.splitlines() if line.startswith("taxi.registry.RegistryError")]
    assert warm.returncode == 30 and error.endswith("tuning did not start: fix the tracking server and rerun")
    assert "TuneHyperparams" in warm.stderr.split(" failed: RegistryError")[0].rsplit("ERROR: ", 1)[-1]

    # the warm start meets the 500 before the decision does: this part is about the decision
    another_model = (*month, "--TuneHyperparams-seed", "7", "--TuneHyperparams-warm-start", "false")
    failed = run_luigi(tmp_path, config, *another_model, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert failed.returncode == 30, failed.stderr[-3000:]
    [error] = [line for line in failed.stderr.splitlines() if line.startswith("taxi.registry.RegistryError")]
    assert error.startswith(f"taxi.registry.RegistryError: cannot read the champion alias of {MODEL} at {proxy.url}: ")
    assert "500 error responses" in error and error.endswith("the champion alias did not move: fix the tracking "
                                                             "server and rerun")
    assert aliases(client) == {"champion": 1}
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    assert ("GET", CHAMPION_LOOKUP) in proxy.seen

    proxy.clear()
    again = run_luigi(tmp_path, config, *another_model)
    assert again.returncode == 0, again.stderr[-3000:]
    registration = json.loads(_newest_registration(tmp_path / "store").read_text())
    assert (registration["version"], registration["previous_champion_version"]) == (2, 1)


def _newest_registration(store: Path) -> Path:
    return max(store.rglob("registration.json"), key=lambda p: p.stat().st_mtime)


def test_two_registrations_at_once_leave_the_better_model_champion(tmp_path, sampled_tlc, proxied_mlflow):
    """`scripts/backfill ... --workers 2` registers two trained months at the same moment. The proxy forces the worst
    interleaving: it holds the first champion lookup until the second arrives (both read the same champion), then
    the first alias update until the second arrives, and lets the better model's through first, so the worse one
    would have the last word. The `mlflow_registry` resource must serialise the decisions."""
    proxy, client = proxied_mlflow
    config = proxied_config(tmp_path, sampled_tlc, proxy)
    for year, month in (GOOD, WORSE):
        trained = run_luigi(tmp_path, config, "TrainModel", "--year", year, "--month", month)
        assert trained.returncode == 0, trained.stderr[-3000:]

    def better_first(body: bytes) -> int:
        version = client.get_model_version(MODEL, json.loads(body)["version"])
        return 0 if client.get_run(version.run_id).data.tags["train.month"] == "2021-01" else 1

    lookups = proxy.hold("GET", CHAMPION_LOOKUP, count=2, order=lambda body: 0, timeout=10)
    updates = proxy.hold("POST", SET_ALIAS, count=2, order=better_first, timeout=10)
    done = subprocess.run([str(ROOT / "scripts" / "backfill"), "green", "2021-01", "2023-01", "--workers", "2"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
    assert done.returncode == 20, done.stderr[-3000:]  # [retcode] missing_data: the months between are not there
    assert set(re.findall(r" done +RegisterModel\(color=green, year=(\d+), month=(\d+)", done.stderr)) == {
        ("2021", "1"), ("2023", "1")}
    assert one_champion_and_the_other_compared_with_it(client, tmp_path / "store")
    [second] = [r for r in (json.loads(p.read_text()) for p in (tmp_path / "store").rglob("registration.json"))
                if r["previous_champion_version"] is not None]
    moves = 1 + (second["decision"] in ("champion", "challenger"))  # an older month moves no alias
    assert len(lookups.released) >= 2 and len(updates.released) == moves


def one_champion_and_the_other_compared_with_it(client: MlflowClient, store: Path) -> bool:
    """Whichever of the two months decided first is champion; the second saw it: 2021-01 after 2023-01 is older;
    2023-01 after 2021-01 is decided on the margin against 2021-01's model, re-scored by the test on 2023-02's gate
    rows. Decided at once, both would be champion, each compared with nothing."""
    versions = {client.get_run(v.run_id).data.tags["train.month"]: int(v.version)
                for v in client.search_model_versions(f"name='{MODEL}'")}
    registrations = {r["month"]: r for r in (json.loads(p.read_text()) for p in store.rglob("registration.json"))}
    assert sorted(versions) == sorted(registrations) == ["2021-01", "2023-01"]
    [first] = [month for month, r in registrations.items() if r["previous_champion_version"] is None]
    [second] = [month for month in registrations if month != first]
    later = registrations[second]
    assert registrations[first]["decision"] == "champion" and later["previous_champion_version"] == versions[first]
    if second == "2021-01":
        expected = "older"
    else:
        before = rescored(client, versions[first], store, "2023-02")
        assert later["previous_champion_gate_rmse"] == pytest.approx(before, rel=1e-9)
        expected = "champion" if later["gate_rmse"] < before * 0.995 else "challenger"
    assert later["decision"] == expected, later
    champion = second if expected == "champion" else first
    return aliases(client).get("champion") == versions[champion]


@pytest.fixture(scope="module")
def unshuffled_tlc(tmp_path_factory, tlc_dir) -> Path:
    """8000 real trips of each green month, none of them altered."""
    folder = tmp_path_factory.mktemp("unshuffled-tlc")
    for path in sorted(tlc_dir.glob("green_tripdata_*.parquet")):
        sample_month(path, folder / path.name, SAMPLE_ROWS)
    return folder


@pytest.mark.parametrize("registers_first", ["2021-01", "2023-01"])
def test_a_backfill_on_luigid_with_two_workers_ends_with_the_newest_good_month_champion(tmp_path, unshuffled_tlc,
                                                                                     registers_first):
    """Issue 24: `scripts/backfill green 2021-01 2023-01 --workers 2` against a real luigid, in either order of the
    two decisions (the month trained beforehand registers first), ends with 2023-01's model champion. Each month's
    drift is measured against its own validation month: the two years apart do not hold 2023-01 back."""
    server = luigid_service(tmp_path / "luigid").start()
    try:
        store = tmp_path / "store"
        config = write_config(tmp_path / "backfill.cfg", {
            "core": {"local_scheduler": "false", "default_scheduler_url": server.url},
            "taxi": {"source": str(unshuffled_tlc), "store": str(store), "threads": "1"},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                       "artifact_location": str(tmp_path / "mlartifacts")},
            "TuneHyperparams": SMALL_TUNING,
        })
        year, month = registers_first.split("-")
        trained = run_luigi(tmp_path, config, "TrainModel", "--year", year, "--month", str(int(month)), "--no-lock")
        assert trained.returncode == 0, trained.stderr[-3000:]
        done = subprocess.run([str(ROOT / "scripts" / "backfill"), "green", "2021-01", "2023-01", "--workers", "2",
                               "--no-lock"], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
    finally:
        server.stop()
    assert done.returncode == 20, done.stderr[-3000:]  # [retcode] missing_data: the months between are not there
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    registrations = {r["month"]: r for r in (json.loads(p.read_text()) for p in store.rglob("registration.json"))}
    assert registrations[registers_first]["previous_champion_version"] is None  # the order this case is about
    for month, registration in registrations.items():
        assert registration["reference_month"] == {"2021-01": "2021-02", "2023-01": "2023-02"}[month]
        assert not any(m["over"] for m in registration["drift"]), registration["drift"]
    assert one_champion_and_the_other_compared_with_it(client, store)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert client.get_run(champion.run_id).data.tags["train.month"] == "2023-01"


def test_two_months_started_at_once_on_a_new_sqlite_database_both_register(tmp_path, sampled_tlc):
    """Two separate luigi processes (each its own local scheduler) reach MLflow at the same moment with a tracking
    database that does not exist yet: both create it, register, and the decision lock beside it orders them."""
    tracking = tmp_path / "tracking" / "mlflow.db"
    config = write_config(tmp_path / "sqlite.cfg", {
        "taxi": {"source": str(sampled_tlc), "store": str(tmp_path / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}", "artifact_location": str(tmp_path / "artifacts")},
        "TuneHyperparams": SMALL_TUNING,
        "core": private_lock(tmp_path),
    })
    for year, month in (GOOD, WORSE):  # everything before the first MLflow call
        assert run_luigi(tmp_path, config, "BuildFeatures", "--year", year, "--month", month).returncode == 0
    assert not tracking.exists()
    runs = [LuigiProcess(tmp_path, config, "RegisterModel", "--year", year, "--month", month, name=f"register-{year}")
            for year, month in (GOOD, WORSE)]
    assert [run.finish() for run in runs] == [0, 0], "\n".join(run.log[-3000:] for run in runs)
    assert one_champion_and_the_other_compared_with_it(MlflowClient(f"sqlite:///{tracking}"), tmp_path / "store")


def test_a_decision_started_while_another_is_being_made_waits_for_it_and_compares_with_it(tmp_path, sampled_tlc):
    """Two separate luigi processes (each its own local scheduler) on one sqlite registry: the first is held inside
    its decision (tests/support/held_decision.py) while the second starts its own. The decision lock beside the
    database makes the second wait, then compare with the first; without it both would see no champion and both
    would take the alias."""
    tracking = tmp_path / "mlflow.db"
    config = write_config(tmp_path / "sqlite.cfg", {
        "taxi": {"source": str(sampled_tlc), "store": str(tmp_path / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}", "artifact_location": str(tmp_path / "artifacts")},
        "TuneHyperparams": SMALL_TUNING,
        "core": private_lock(tmp_path),
    })
    for year, month in (GOOD, WORSE):
        trained = run_luigi(tmp_path, config, "TrainModel", "--year", year, "--month", month)
        assert trained.returncode == 0, trained.stderr[-3000:]
    # the second run gets as far as its decision (past everything else that takes the lock, such as opening the
    # database) and waits; the first then registers its version inside the decision lock and is held there
    go_first, go_second = tmp_path / "go-first", tmp_path / "go-second"
    second = LuigiProcess(tmp_path, config, "RegisterModel", "--year", WORSE[0], "--month", WORSE[1],
                          name="second", module=HELD_DECISION, env={"TAXI_TEST_HOLD_BEFORE_DECISION": str(go_second)})
    second.wait_for_line(DECIDING)
    first = LuigiProcess(tmp_path, config, "RegisterModel", "--year", GOOD[0], "--month", GOOD[1], name="first",
                         module=HELD_DECISION, env={"TAXI_TEST_HOLD_DECISION": str(go_first)})
    first.wait_for_line(HOLDING)
    go_second.touch()
    time.sleep(3)  # without a lock, the second decides meanwhile (it takes well under a second)
    go_first.touch()
    assert [first.finish(), second.finish()] == [0, 0], first.log[-3000:] + second.log[-3000:]
    registrations = {r["month"]: r for r in (json.loads(p.read_text())
                                             for p in (tmp_path / "store").rglob("registration.json"))}
    assert registrations["2021-01"]["previous_champion_version"] is None
    assert registrations["2023-01"]["previous_champion_version"] == registrations["2021-01"]["version"]
    assert one_champion_and_the_other_compared_with_it(MlflowClient(f"sqlite:///{tracking}"), tmp_path / "store")


def test_registrations_on_one_sqlite_registry_take_turns_without_a_scheduler(tmp_path):
    """registry.register from two threads (flock locks are per open file, so threads contend as processes do), in the
    order that loses an update without a lock: B reads the champion v1 and is still scoring it when A, the better
    model, reads v1 too and takes the alias; B then beats v1 and would take it last. With the lock beside the
    database, A waits for B, then compares with B and wins."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.connect(uri, "turns", str(tmp_path / "artifacts"))
    runs = {}
    for name in ("old", "A", "B"):
        with mlflow.start_run(run_name=name, tags={registry.MONTH_TAG: "2022-01"}) as run:
            mlflow.log_text(name, "model/name.txt")
        runs[name] = run.info.run_id
    rmse = {"A": 5.0, "B": 5.5, "old": 6.0}

    def register(name: str, score_version) -> dict:
        version, decision = registry.register(
            MODEL, runs[name], f"runs:/{runs[name]}/model", rmse[name], score_version,
            lambda champion: promotion.decide("2022-01", rmse[name], champion, [], promotion.Policy()),
            promotion.Policy().accepted())
        return {"version": version, "decision": decision.decision,
                "previous_champion_version": decision.previous_champion_version}

    register("old", lambda uri: pytest.fail("no champion"))
    b_scoring, a_done = threading.Event(), threading.Event()

    def score_by_b(version_uri: str) -> float:
        b_scoring.set()
        a_done.wait(10)  # a lock makes A wait for B instead: then this times out
        return rmse[version_name(version_uri)]

    def version_name(version_uri: str) -> str:
        run_id = MlflowClient().get_model_version(MODEL, version_uri.rsplit("/", 1)[1]).run_id
        return next(name for name, value in runs.items() if value == run_id)

    results = {}
    b = threading.Thread(target=lambda: results.update(B=register("B", score_by_b)))
    b.start()
    assert b_scoring.wait(30)
    results["A"] = register("A", lambda version_uri: rmse[version_name(version_uri)])
    a_done.set()
    b.join(60)
    assert (results["B"]["decision"], results["B"]["previous_champion_version"]) == ("champion", 1)
    assert (results["A"]["decision"], results["A"]["previous_champion_version"]) == (
        "champion", results["B"]["version"])
    assert aliases(MlflowClient())["champion"] == results["A"]["version"]
