"""Rolling the champion back, as an operator does it, against a real `mlflow server` and luigid: scripts/champion
from the command line, and the Champions page of `python -m taxi.web` in headless Chromium. Each move is checked in
the registry's own tags (the alias history) and aliases; the next month's decision compares with the rolled-back
champion (its RMSE rescored here); a bad `--to` is refused naming the versions there are; a form without its CSRF
token and a page without a session move nothing; and a rollback waits while a decision holds the registry.

The registry: green 2021-01 trained with one tree (v1, the first champion), then with the small tuning (v2, which
beats v1 by the margin), on the sampled months (8000 trips each; 2023-01's distances shuffled).
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime as dt
import getpass
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug.security import generate_password_hash

from taxi import alias_history, layout, promotion, registry, rollback, tracking
from taxi.web.settings import HASH_ENV
from tests.integration.test_registry import rescored
from tests.support.browser import chromium
from tests.support.held_registry import HOLDING_REGISTRY
from tests.support.luigi_process import LuigiProcess, private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import Service, free_port, luigid_service, mlflow_service
from tests.support.store import one_file, pattern

MODEL, OTHER = registry.model_name("green"), registry.model_name("yellow")
HISTORY = "taxi.alias_history."
OPERATOR = "Grace Operator"  # the name the browser logs in with
ONE_TREE = ("--TuneHyperparams-max-evals", "1", "--TuneHyperparams-num-boost-round", "1")


@dataclasses.dataclass
class Site:
    url: str
    password: str
    workdir: Path
    store: Path
    profile: Path
    mlflow: Service
    luigid: Service

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.mlflow.url)

    def champion(self) -> int:
        return int(self.client.get_registered_model(MODEL).aliases["champion"])

    def history(self) -> list[dict]:
        """The registry's history tags, oldest first, read here straight from the registered model."""
        tags = self.client.get_registered_model(MODEL).tags
        return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(HISTORY)]

    def versions(self) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name='{MODEL}'"))


@pytest.fixture(scope="module")
def site(tmp_path_factory, sampled_tlc) -> Site:
    """luigid, an `mlflow server` and the page on free loopback ports with a profile like config/central.cfg, and a
    registry of v1 (one tree) and v2 (the small tuning) of green 2021-01, both made champion by their decisions."""
    workdir = tmp_path_factory.mktemp("rollback")
    mlflow_, luigid = mlflow_service(workdir / "mlflow"), luigid_service(workdir / "luigid")
    password, port = secrets.token_urlsafe(16), free_port()
    profile = write_config(workdir / "profile.cfg", {
        "core": {**private_lock(workdir), "local_scheduler": "false", "scheduler_url": luigid.url},
        "worker": {"task_process_context": "taxi.pipeline.tasklog.TaskLog"},
        "taxi": {"source": str(sampled_tlc), "store": str(workdir / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": mlflow_.url, "artifact_location": ""},
        "TuneHyperparams": SMALL_TUNING,
        "RegisterModel": {"max_rmse": "60"}})  # one tree is a model to roll back to, not one to reject
    page = Service("web", [sys.executable, "-m", "taxi.web", "serve", "--port", str(port), "--state",
                           str(workdir / "state")], port, "/login", workdir / "web.log",
                   env={"LUIGI_CONFIG_PATH": str(profile), HASH_ENV: generate_password_hash(password)})
    try:
        mlflow_.start(), luigid.start(), page.start()
        for tuning in (ONE_TREE, ()):  # one month's task ids twice: luigid would not run the second's TrainModel
            done = run_luigi(workdir, profile, "RegisterModel", "--year", "2021", "--month", "1", *tuning,
                             "--local-scheduler")
            assert done.returncode == 0, done.stderr[-3000:]
        yield Site(f"http://127.0.0.1:{port}", password, workdir, workdir / "store", profile, mlflow_, luigid)
    finally:
        page.stop()
        luigid.stop()
        mlflow_.stop()


def champion_cli(site: Site, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """scripts/champion as an operator runs it, with the site's profile."""
    argv = [str(ROOT / "scripts" / "champion"), *args]
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(site.profile)}
    if popen:
        return subprocess.Popen(argv, env=env, text=True, **popen)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def logged_in(site: Site) -> requests.Session:
    client = requests.Session()
    token = csrf_token(client.get(f"{site.url}/login").text)
    done = client.post(f"{site.url}/login", data={"csrf_token": token, "name": OPERATOR, "password": site.password},
                       allow_redirects=False)
    assert done.status_code == 302, done.text
    return client


def registered(site: Site, ym: str) -> dict:
    return json.loads(one_file(site.store, layout.RUN, color="green", ym=ym, name=layout.REGISTRATION).read_text())


def test_the_decisions_are_in_the_history(site):
    """What the two registrations did, as the pipeline's OS user, before any rollback."""
    assert site.history()[:2] == [
        {"alias": "champion", "from": None, "to": 1, "action": "decision", "who": getpass.getuser(),
         "via": "pipeline", "why": site.client.get_model_version(MODEL, "1").tags["taxi.reason"]},
        {"alias": "champion", "from": 1, "to": 2, "action": "decision", "who": getpass.getuser(),
         "via": "pipeline", "why": site.client.get_model_version(MODEL, "2").tags["taxi.reason"]}]


def test_a_rollback_from_the_command_line_is_recorded_and_the_next_month_compares_with_it(site):
    """v2 beat v1; `scripts/champion rollback green` (no --to) puts v1 back, recorded with its reason and the OS
    user, through luigid; scripts/status shows the move; then 2023-01's decision compares with v1, not v2."""
    assert site.champion() == 2
    before = len(site.history())
    reason = "v2 predicts 0 minutes for JFK trips"
    done = champion_cli(site, "rollback", "green", "--reason", reason)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == (f"{MODEL}: @champion moved from v2 to v1 by {getpass.getuser()} (scripts/champion): "
                           f"{reason}\n")
    assert site.champion() == 1
    history = site.history()
    assert len(history) == before + 1
    assert history[-1] == {"alias": "champion", "from": 2, "to": 1, "action": "rollback", "why": reason,
                           "who": getpass.getuser(), "via": "scripts/champion"}
    ran = requests.get(f"{site.luigid.url}/api/task_list", params={"data": json.dumps({"status": "DONE"})},
                       timeout=10).json()["response"]
    assert any(task_id.startswith("RollBackChampion_green_") for task_id in ran)  # it went through luigid

    shown = subprocess.run([str(ROOT / "scripts" / "status"), "green"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "LUIGI_CONFIG_PATH": str(site.profile)})
    assert shown.returncode == 0, shown.stderr[-3000:]
    section = shown.stdout.split(f"{MODEL} alias history (newest first)\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert re.split(r"\s{2,}", section[0]) == ["when (UTC)", "alias", "from", "to", "what", "who", "via", "why"]
    assert re.split(r"\s{2,}", section[1])[1:] == ["champion", "v2", "v1", "rollback", getpass.getuser(),
                                                   "scripts/champion", reason]

    done = run_luigi(site.workdir, site.profile, "RegisterModel", "--year", "2023", "--month", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    nxt = registered(site, "2023-01")
    assert (nxt["version"], nxt["previous_champion_version"], nxt["previous_champion_month"]) == (3, 1, "2021-01")
    v1_on_the_gate = rescored(site.client, 1, site.store, "2023-02")  # v1 scored here on 2023-01's gate rows
    assert nxt["previous_champion_gate_rmse"] == pytest.approx(v1_on_the_gate, rel=1e-9)
    report = one_file(site.store, layout.RUN, color="green", ym="2023-01", name=layout.REPORT).read_text()
    assert f"| the champion before, on the same gate rows | {v1_on_the_gate:.4f} (v1, trained on 2021-01) |" in report
    assert site.history()[-1] == {"alias": nxt["decision"], "from": 1 if nxt["decision"] == "champion" else None,
                                  "to": 3, "action": "decision", "why": nxt["reason"], "who": getpass.getuser(),
                                  "via": "pipeline"}


def test_a_rollback_from_the_page_is_recorded_with_the_login_s_name(site, tmp_path):
    """Logged out, the Champions page is the login page (no form); logged in as OPERATOR, the form moves the champion
    to the version chosen, and the page shows the move at the top of the history."""
    browser = chromium(tmp_path / "chromium")
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(f"{site.url}/champions")
        wait.until(expected_conditions.url_contains("/login"))
        assert browser.find_elements(By.ID, "rollback-green") == []
        browser.find_element(By.ID, "name").send_keys(OPERATOR)
        browser.find_element(By.ID, "password").send_keys(site.password)
        browser.find_element(By.ID, "login").click()
        wait.until(expected_conditions.title_contains("Champions"))
        current = site.champion()
        target = min(v for v in site.versions() if v != current)
        Select(browser.find_element(By.ID, "to-green")).select_by_value(str(target))
        reason = f"back to v{target}: v{current}'s month had a meter fault"
        browser.find_element(By.ID, "reason-green").send_keys(reason)
        browser.find_element(By.ID, "roll-back-green").click()
        moved = WebDriverWait(browser, 300).until(expected_conditions.presence_of_element_located((By.ID, "moved")))
        assert moved.text == f"{MODEL}: @champion moved from v{current} to v{target} by {OPERATOR} (operator page): " \
                             f"{reason}"
        top = browser.find_elements(By.CSS_SELECTOR, "#history-green tr")[1]
        assert [cell.text for cell in top.find_elements(By.TAG_NAME, "td")][1:] == [
            "champion", f"v{current}", f"v{target}", "rollback", OPERATOR, "operator page", reason]
        browser.find_element(By.XPATH, "//button[text()='Log out']").click()
        wait.until(expected_conditions.url_contains("/login"))
        browser.get(f"{site.url}/champions")
        wait.until(expected_conditions.url_contains("/login"))
        assert browser.find_elements(By.ID, "rollback-green") == []
    finally:
        browser.quit()
    assert site.champion() == target
    assert site.history()[-1] == {"alias": "champion", "from": current, "to": target, "action": "rollback",
                                  "why": reason, "who": OPERATOR, "via": "operator page"}


def test_a_rollback_without_the_csrf_token_or_a_session_moves_nothing(site):
    before, history = site.champion(), site.history()
    target = min(v for v in site.versions() if v != before)
    form = {"to": str(target), "reason": "a forged form"}
    client = logged_in(site)
    for data in (form, {**form, "csrf_token": "forged"}):
        answer = client.post(f"{site.url}/champions/green/rollback", data=data, allow_redirects=False)
        assert answer.status_code == 400 and "CSRF" in answer.text, answer.text[:500]
    anonymous = requests.Session()
    token = csrf_token(anonymous.get(f"{site.url}/login").text)
    answer = anonymous.post(f"{site.url}/champions/green/rollback", data={**form, "csrf_token": token},
                            allow_redirects=False)
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    assert (site.champion(), site.history()) == (before, history)


def test_a_login_without_a_name_is_refused(site):
    client = requests.Session()
    token = csrf_token(client.get(f"{site.url}/login").text)
    for name in ("", "   ", "<script>", "x" * 65):
        answer = client.post(f"{site.url}/login", data={"csrf_token": token, "name": name, "password": site.password},
                             allow_redirects=False)
        assert answer.status_code == 400 and "Give your name" in answer.text
    assert client.get(f"{site.url}/champions", allow_redirects=False).status_code == 302


def test_a_bad_to_is_refused_naming_the_versions_there_are(site):
    """A version the registry lacks, or one of another color's model (yellow has a v1 here), from the command line
    and from the page: refused with the versions of green listed, nothing moved, nothing recorded."""
    run_id = site.client.get_model_version(MODEL, "1").run_id
    if not site.client.search_model_versions(f"name='{OTHER}'"):
        site.client.create_registered_model(OTHER)
        site.client.create_model_version(OTHER, f"runs:/{run_id}/model", run_id=run_id)
    before, history = site.champion(), site.history()
    versions = ", ".join(f"v{v}" for v in site.versions())
    assert versions == "v1, v2, v3"  # the premise: the three registrations of this module
    for to, words in (("99", f"{MODEL} has no version 99 in the registry"),
                      (f"{OTHER}/1", f"{OTHER}/1 is a version of {OTHER}, not of {MODEL}"),
                      (f"models:/{OTHER}/1", f"is a version of {OTHER}")):
        done = champion_cli(site, "rollback", "green", "--to", to, "--reason", "a bad target")
        assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
        assert words in done.stderr and f"(versions of {MODEL}: {versions})" in done.stderr, done.stderr[-2000:]
    client = logged_in(site)
    token = csrf_token(client.get(f"{site.url}/champions").text)
    answer = client.post(f"{site.url}/champions/green/rollback",
                         data={"csrf_token": token, "to": "99", "reason": "a bad target"})
    assert answer.status_code == 400
    shown = re.search(r'id="rollback-error">([^<]*)<', answer.text).group(1)
    assert shown == (f"The champion of {MODEL} did not move: {MODEL} has no version 99 in the registry (versions of "
                     f"{MODEL}: {versions})")
    done = champion_cli(site, "rollback", "green")
    assert done.returncode == 2 and "--reason" in done.stderr
    assert (site.champion(), site.history()) == (before, history)


def test_a_rollback_waits_while_a_decision_holds_the_registry(site):
    """tests/support/held_registry.py takes luigid's mlflow_registry resource, as RegisterModel's decision does; a
    rollback started meanwhile waits for it, then moves the alias."""
    release = site.workdir / "release-registry"
    holder = LuigiProcess(site.workdir, site.profile, "HoldRegistry", "--until", str(release), name="holder",
                          module="tests.support.held_registry")
    holder.wait_for_line(HOLDING_REGISTRY, timeout=120)
    before = site.champion()
    target = min(v for v in site.versions() if v != before)
    waiting = champion_cli(site, "rollback", "green", "--to", str(target), "--reason", "while a decision runs",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)  # without the resource, the rollback is done in about 3 s
    still = waiting.poll()
    champion_meanwhile = site.champion()
    release.touch()
    out, err = waiting.communicate(timeout=120)
    assert holder.finish(120) == 0, holder.log[-3000:]
    assert still is None and champion_meanwhile == before, err[-2000:]
    assert waiting.returncode == 0, err[-2000:]
    assert site.champion() == target and site.history()[-1]["why"] == "while a decision runs"


def test_mlflow_sees_the_alias_where_the_history_says(site):
    """The newest champion move of the history is where MLflow's alias is, read through MLflow's own API."""
    mlflow.set_tracking_uri(site.mlflow.url)
    newest = [move for move in site.history() if move["alias"] == "champion"][-1]
    assert int(site.client.get_model_version_by_alias(MODEL, "champion").version) == newest["to"]


def test_a_move_is_recorded_once_though_an_attempt_was_interrupted_and_not_at_all_when_there_is_none(site):
    """An attempt that recorded its move and died before moving the alias (its tag written here by hand): the next
    attempt moves the alias without a second entry. A move to where the alias is already records nothing."""
    mlflow.set_tracking_uri(site.mlflow.url)
    before = site.champion()
    target = min(v for v in site.versions() if v != before)
    interrupted = alias_history.Move(dt.datetime.now(dt.timezone.utc), "champion",
                                     before, target, "rollback", "interrupted", "root", "scripts/champion")
    site.client.set_registered_model_tag(MODEL, interrupted.key(), interrupted.encode())
    history = site.history()
    done = champion_cli(site, "rollback", "green", "--to", str(target), "--reason", "the retry")
    assert done.returncode == 0, done.stderr[-2000:]
    assert site.champion() == target and site.history() == history
    assert registry.move_alias(site.client, MODEL, "champion", target, "decision", "again", "root", "pipeline") is None
    assert site.history() == history


def test_a_registry_the_store_does_not_serve_is_refused_by_the_command_and_its_task(site, tmp_path):
    """Pointed at another registry, `scripts/champion list` and the RollBackChampion task itself fail naming both
    registries, and the server's alias stays where it was."""
    other = write_config(tmp_path / "other.cfg", {**configparser_sections(site.profile), "mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path}/other.db", "artifact_location": str(tmp_path / "mlartifacts")}})
    before, history = site.champion(), site.history()
    listed = subprocess.run([str(ROOT / "scripts" / "champion"), "list", "green"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "LUIGI_CONFIG_PATH": str(other)})
    assert listed.returncode == 1 and listed.stdout == ""
    assert f"serves the registry at {site.mlflow.url}" in listed.stderr
    task = run_luigi(tmp_path, other, "RollBackChampion", "--color", "green", "--to", "1", "--reason", "elsewhere",
                     "--who", "root", "--via", "test", "--requested", "now", "--local-scheduler")
    assert task.returncode != 0
    assert f"OtherRegistry: the store {site.store} serves the registry at {site.mlflow.url}" in task.stderr
    assert site.champion() == before and site.history() == history


def test_a_rollback_refused_under_the_lock_fails_at_once_and_is_not_retried(site):
    """The task refused (no version 99) through luigid by a worker that waits for work (keep_alive, as
    scripts/champion runs it): it fails at once, and luigid does not hand it out again."""
    done = run_luigi(site.workdir, site.profile, "RollBackChampion", "--color", "green", "--to", "99", "--reason",
                     "no such version", "--who", "root", "--via", "test", "--requested", str(time.time()),
                     "--worker-keep-alive", timeout=120)
    assert done.returncode != 0
    assert f"RollbackRefused: {MODEL} has no version 99" in done.stderr


def test_a_reader_that_stops_early_gets_no_traceback_and_the_list_exits_0(site):
    """`scripts/champion list | true`: the reader is gone before the list is written."""
    done = subprocess.run(["bash", "-c", '"$0" list green | true; exit "${PIPESTATUS[0]}"',
                           str(ROOT / "scripts" / "champion")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(site.profile)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def configparser_sections(profile: Path) -> dict[str, dict[str, str]]:
    """A profile's sections, to write a variant of it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(profile)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_a_rerun_of_a_decision_an_operator_rolled_back_leaves_the_rollback_standing(site):
    """v2's month registered again (its registration deleted): its recorded decision, made against v1, is not carried
    out again over a rollback to v1 since; the alias stays and the history gets no entry."""
    if site.champion() != 1:
        done = champion_cli(site, "rollback", "green", "--to", "1", "--reason", "back to the first model")
        assert done.returncode == 0, done.stderr[-2000:]
    record = next(path for path in site.store.glob(pattern(layout.RUN, color="green", ym="2021-01",
                                                          name=layout.REGISTRATION))
                  if json.loads(path.read_text())["version"] == 2)
    assert json.loads(record.read_text())["previous_champion_version"] == 1
    record.unlink()
    history, versions = site.history(), site.versions()
    done = run_luigi(site.workdir, site.profile, "RegisterModel", "--year", "2021", "--month", "1",
                     "--local-scheduler")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(record.read_text())["version"] == 2 and site.versions() == versions
    assert site.champion() == 1 and site.history() == history


def test_a_rollback_waits_for_a_decision_on_a_sqlite_registry(tmp_path):
    """Without a scheduler, on one sqlite registry: a decision (v3, which beats v2) is held while it scores the
    champion, inside the lock beside the database; a rollback to v1 started meanwhile (another thread: flock locks
    are per open file) waits, then moves the alias from the decision's v3, not from the v2 the decision compared
    with."""
    tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "rollback", str(tmp_path / "artifacts"))
    runs, rmse = {}, {"v1": 6.0, "v2": 5.0, "v3": 4.0}
    for name in rmse:
        with mlflow.start_run(run_name=name, tags={registry.MONTH_TAG: "2022-01"}) as run:
            mlflow.log_text(name, "model/name.txt")
        runs[name] = run.info.run_id

    def register(name: str, score_version) -> None:
        registry.register(MODEL, runs[name], f"runs:/{runs[name]}/model", rmse[name], score_version,
                          lambda champion: promotion.decide("2022-01", rmse[name], champion, [], promotion.Policy()),
                          promotion.Policy().accepted())

    register("v1", lambda uri: pytest.fail("no champion to score"))
    register("v2", lambda uri: rmse["v1"])
    scoring, release = threading.Event(), threading.Event()

    def held(uri: str) -> float:
        scoring.set()
        release.wait(30)
        return rmse["v2"]

    decision = threading.Thread(target=register, args=("v3", held))
    decision.start()
    assert scoring.wait(30)
    rolled = threading.Thread(target=rollback.roll_back, args=("green", "1", "during a decision", "tester", "test"))
    rolled.start()
    rolled.join(3)  # without the lock it is done in well under a second
    waited = rolled.is_alive()
    release.set()
    decision.join(60)
    rolled.join(60)
    assert waited
    moves = alias_history.moves(MlflowClient().get_registered_model(MODEL).tags)
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [
        ("decision", None, 1), ("decision", 1, 2), ("decision", 2, 3), ("rollback", 3, 1)]
    assert {a: int(v) for a, v in MlflowClient().get_registered_model(MODEL).aliases.items()} == {"champion": 1}
