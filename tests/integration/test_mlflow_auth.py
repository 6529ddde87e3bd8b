"""MLflow with its basic-auth app as systemd/mlflow.service runs it (tests/support/mlflow_auth.py): nothing answered
without a login, a user with READ cannot move an alias, a user without grants sees nothing, the pipeline's user
(made by scripts/mlflow-users) runs a whole month that registers and moves the alias but cannot grant or delete, no
password anywhere the pipeline writes or in the process listing, and a run with a wrong or missing login fails in one
line that says what to set. On PostgreSQL (the cluster drop-in), the same refusals and users, and a month of the
cluster profile run by a worker host and a submitting host with the login in their environment.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from taxi import layout, registry
from tests.support.cluster import Cluster, luigid_server, worker_host, write_months
from tests.support.luigi_process import private_lock
from tests.support.mlflow_auth import AuthMlflow, Login
from tests.support.paths import BIN, ROOT
from tests.support.postgres import Postgres
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import free_port
from tests.support.store import one_file, run_file

MODEL = registry.model_name("green")
EXPERIMENT = "taxi-duration"
MONTH = ("--year", "2021", "--month", "1")
API = "/api/2.0/mlflow"
GRANT = "/api/3.0/mlflow/users/permissions/grant"


def profile(path: Path, server: AuthMlflow, store: Path, source: Path) -> Path:
    """The server profile's MLflow and task logs, with a local scheduler, a store in the test and a tiny tuning."""
    return write_config(path, {
        "core": private_lock(path.parent),
        "worker": {"task_process_context": "taxi.pipeline.tasklog.TaskLog"},
        "taxi": {"store": str(store), "source": str(source), "threads": "1"},
        "mlflow": {"tracking_uri": server.url, "artifact_location": ""},
        "TuneHyperparams": SMALL_TUNING})


def aliases(server: AuthMlflow) -> dict[str, int]:
    """The model's aliases as the tracking database holds them, read by the test itself."""
    with sqlite3.connect(server.workdir / "mlflow.db") as db:
        return {alias: int(version) for alias, version in
                db.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (MODEL,))}


def admin_call(server: AuthMlflow, method: str, path: str, **kwargs) -> dict:
    reply = server.as_user(server.admin).request(method, server.url + path, timeout=30, **kwargs)
    assert reply.ok, (path, reply.status_code, reply.text)
    return reply.json() if reply.content else {}


def new_user(server: AuthMlflow, name: str, grants: dict[tuple[str, str], str] | None = None) -> Login:
    """A user made by the admin, with `grants` ((resource type, id) -> permission)."""
    login = Login(name, f"{name}-password-of-test")
    admin_call(server, "POST", f"{API}/users/create", json={"username": login.user, "password": login.password})
    for (resource_type, resource_id), permission in (grants or {}).items():
        admin_call(server, "POST", GRANT, json={"username": login.user, "resource_type": resource_type,
                                                "resource_id": resource_id, "permission": permission})
    return login


class ProcessListing(threading.Thread):
    """`ps -ef` (whole command lines) every 0.2 s until stopped: every command line that ran meanwhile."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(subprocess.run(["ps", "-efww"], capture_output=True, text=True).stdout)
            self.done.wait(0.2)

    def __enter__(self) -> "ProcessListing":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> AuthMlflow:
    server = AuthMlflow(tmp_path_factory.mktemp("mlflow-auth")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def month(server, tmp_path_factory, sampled_tlc) -> dict:
    """scripts/mlflow-users, then a whole month (green 2021-01, RegisterModel) as the pipeline's user, with the login
    only in the environment; the process listing sampled throughout."""
    workdir = tmp_path_factory.mktemp("month")
    config = profile(workdir / "server.cfg", server, workdir / "store", sampled_tlc)
    with ProcessListing() as listing:
        users = server.make_users(config)
        assert users.returncode == 0, users.stderr
        done = run_luigi(workdir, config, "RegisterModel", *MONTH, env=server.taxi.env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"workdir": workdir, "config": config, "users": users, "run": done, "ps": listing.samples}


ROUTES = [  # (method, path, JSON body): the REST API, the UI's ajax API, the UI, GraphQL and the artifact routes
    ("GET", f"{API}/experiments/search?max_results=10", None),
    ("GET", f"{API}/experiments/get-by-name?experiment_name={EXPERIMENT}", None),
    ("GET", f"{API}/registered-models/get?name={MODEL}", None),
    ("GET", f"{API}/registered-models/alias?name={MODEL}&alias=champion", None),
    ("POST", f"{API}/registered-models/alias", {"name": MODEL, "alias": "rogue", "version": "1"}),
    ("DELETE", f"{API}/registered-models/alias?name={MODEL}&alias=champion", None),
    ("POST", f"{API}/registered-models/delete", {"name": MODEL}),
    ("GET", f"{API}/users/list", None),
    ("GET", "/ajax-api/2.0/mlflow/experiments/search?max_results=10", None),
    ("POST", "/ajax-api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "rogue", "version": "1"}),
    ("GET", "/", None),
    ("POST", "/graphql", {"query": '{ mlflowSearchRuns(input: {experimentIds: ["1"]}) { runs { info { runId } } } }'}),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts", None),
    ("GET", f"/model-versions/get-artifact?name={MODEL}&version=1&path=MLmodel", None),
]


@pytest.mark.parametrize("login", [None, Login("taxi", "not-the-password"), Login("admin", "not-the-password"),
                                   Login("nobody", "nobody-at-all-1")], ids=["none", "taxi", "admin", "unknown"])
def test_no_credentials_or_wrong_ones_are_refused_on_every_route(server, login):
    """Whatever the registry holds (with a champion: test_a_reader_cannot_move_the_alias tries that too)."""
    before = aliases(server)
    answers = {f"{method} {path}": server.as_user(login).request(method, server.url + path, json=body,
                                                                  timeout=30).status_code
               for method, path, body in ROUTES}
    assert answers == {route: 401 for route in answers}
    assert aliases(server) == before


def test_a_reader_cannot_move_the_alias(server, month):
    version = admin_call(server, "GET", f"{API}/model-versions/get?name={MODEL}&version=1")["model_version"]
    second = admin_call(server, "POST", f"{API}/model-versions/create", json={
        "name": MODEL, "source": version["source"], "run_id": version["run_id"],
        "model_id": registry.logged_model_id(version["source"])})["model_version"]["version"]
    experiment_id = admin_call(server, "GET", f"{API}/experiments/get-by-name?experiment_name={EXPERIMENT}")[
        "experiment"]["experiment_id"]
    reader = new_user(server, "reader", {("registered_model", MODEL): "READ", ("experiment", experiment_id): "READ"})
    session = server.as_user(reader)
    read = session.get(f"{server.url}{API}/registered-models/get", params={"name": MODEL}, timeout=30)
    assert read.status_code == 200 and read.json()["registered_model"]["name"] == MODEL  # the login works
    moved = session.post(f"{server.url}{API}/registered-models/alias", timeout=30,
                         json={"name": MODEL, "alias": "champion", "version": second})
    removed = session.delete(f"{server.url}{API}/registered-models/alias", params={"name": MODEL, "alias": "champion"},
                             timeout=30)
    strangers = [server.as_user(login).post(f"{server.url}{API}/registered-models/alias", timeout=30, json={
        "name": MODEL, "alias": "champion", "version": second}).status_code
        for login in (None, Login("taxi", "not-the-password"), Login("admin", "not-the-password"))]
    assert (moved.status_code, removed.status_code, strangers) == (403, 403, [401, 401, 401])
    assert aliases(server) == {"champion": 1}


def test_the_pipeline_user_registers_a_month_and_moves_the_alias(server, month):
    registration = json.loads(run_file(month["workdir"] / "store", layout.REGISTRATION).read_text())
    assert (registration["version"], registration["decision"]) == (1, "champion")
    assert registration["tracking_uri"] == server.url
    assert aliases(server)["champion"] == 1
    with sqlite3.connect(server.workdir / "mlflow.db") as db:  # the version came from a run of the experiment
        [(experiment,)] = db.execute("SELECT e.name FROM model_versions v JOIN runs r ON v.run_id = r.run_uuid JOIN "
                                     "experiments e ON r.experiment_id = e.experiment_id WHERE v.name = ? AND "
                                     "v.version = 1", (MODEL,))
    assert experiment == EXPERIMENT
    assert f"{server.url}: user taxi: created" in month["users"].stdout


def test_the_pipeline_user_can_neither_grant_nor_delete(server, month):
    experiment_id = admin_call(server, "GET", f"{API}/experiments/get-by-name?experiment_name={EXPERIMENT}")[
        "experiment"]["experiment_id"]
    new_user(server, "bystander")
    session = server.as_user(server.taxi)
    assert session.get(f"{server.url}{API}/registered-models/get", params={"name": MODEL}, timeout=30).ok
    refused = {
        "grant on the experiment": session.post(server.url + GRANT, timeout=30, json={
            "username": "bystander", "resource_type": "experiment", "resource_id": experiment_id,
            "permission": "READ"}).status_code,
        "grant on the model": session.post(server.url + GRANT, timeout=30, json={
            "username": "bystander", "resource_type": "registered_model", "resource_id": MODEL,
            "permission": "READ"}).status_code,
        "delete the model": session.delete(f"{server.url}{API}/registered-models/delete", json={"name": MODEL},
                                           timeout=30).status_code,
        "delete the experiment": session.post(f"{server.url}{API}/experiments/delete", timeout=30,
                                              json={"experiment_id": experiment_id}).status_code,
    }
    assert refused == {action: 403 for action in refused}
    assert aliases(server) == {"champion": 1}


def test_a_user_without_grants_sees_nothing(server, month):
    visitor = new_user(server, "visitor")
    session = server.as_user(visitor)
    experiments = session.get(f"{server.url}{API}/experiments/search", params={"max_results": 100}, timeout=30)
    models = session.get(f"{server.url}{API}/registered-models/search", params={"max_results": 100}, timeout=30)
    assert experiments.status_code == models.status_code == 200  # the login works
    assert experiments.json().get("experiments", []) == [] and models.json().get("registered_models", []) == []
    refused = {path: session.get(server.url + path, timeout=30).status_code for path in (
        f"{API}/experiments/get-by-name?experiment_name={EXPERIMENT}", f"{API}/registered-models/get?name={MODEL}",
        f"{API}/registered-models/alias?name={MODEL}&alias=champion",
        f"/model-versions/get-artifact?name={MODEL}&version=1&path=MLmodel")}
    assert refused == {path: 403 for path in refused}


def test_no_credential_in_logs_tags_reports_task_logs_or_the_process_listing(server, month):
    files = [path for folder in (month["workdir"], server.workdir) for path in folder.rglob("*") if path.is_file()]
    texts = {str(path): path.read_bytes() for path in files}
    for name in ("run", "users"):
        texts[f"{name} output"] = (month[name].stdout + month[name].stderr).encode()
    texts["ps -ef"] = "\n".join(month["ps"]).encode()
    runs = admin_call(server, "POST", f"{API}/runs/search", json={"experiment_ids": ["1"], "max_results": 1000})
    texts["runs' tags and params"] = json.dumps(runs).encode()
    store = month["workdir"] / "store"
    assert one_file(store, layout.TASK_LOG, family="RegisterModel").is_file()  # what is searched is there
    assert run_file(store, layout.REGISTRATION).is_file() and len(runs["runs"]) > 2
    assert "luigi --module taxi.tasks RegisterModel" in texts["ps -ef"].decode()
    leaks = [(where, name) for where, text in texts.items() for name, secret in server.secrets.items()
             if secret.encode() in text]
    assert leaks == []


@pytest.mark.parametrize("given, said", [
    ({"MLFLOW_TRACKING_USERNAME": "taxi", "MLFLOW_TRACKING_PASSWORD": "a-wrong-password"},
     "refused the credentials of user 'taxi'"),
    ({}, "requires credentials")], ids=["wrong", "missing"])
def test_a_run_without_the_right_login_fails_in_one_line_saying_what_to_set(server, month, tmp_path, sampled_tlc,
                                                                              given, said):
    config = profile(tmp_path / "server.cfg", server, tmp_path / "store", sampled_tlc)
    failed = run_luigi(tmp_path, config, "TuneHyperparams", *MONTH, env=given)
    assert failed.returncode == 30, failed.stderr[-3000:]  # [retcode] task_failed
    line = (f"the MLflow server at {server.url} {said}: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to "
            f"the pipeline's MLflow user (docs/security.md)")
    errors = [text for text in failed.stderr.splitlines() if text.startswith("ERROR")]
    assert errors[0].endswith(f"failed: TrackingRefused: {line}"), errors
    assert "a-wrong-password" not in failed.stdout + failed.stderr


def test_a_scheduled_run_with_a_wrong_login_stops_at_once_in_one_line(server, month, tmp_path, sampled_tlc):
    """scripts/run-monthly (taxi-train@.service) checks the login before it looks for a month or downloads one."""
    config = profile(tmp_path / "server.cfg", server, tmp_path / "store", sampled_tlc)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config), "MLFLOW_TRACKING_USERNAME": "taxi",
           "MLFLOW_TRACKING_PASSWORD": "a-wrong-password"}
    done = subprocess.run([str(BIN / "python"), "-m", "taxi.monthly", "green", "--as-of", "2021-04-20"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 30, done.stderr[-3000:]  # [retcode] task_failed
    assert done.stderr.splitlines() == [
        f"ERROR: taxi.monthly: the MLflow server at {server.url} refused the credentials of user 'taxi': set "
        f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to the pipeline's MLflow user (docs/security.md)"]
    assert not (tmp_path / "store").exists()


def test_the_services_script_starts_mlflow_with_its_users_when_given_the_passwords(tmp_path):
    """`scripts/services start` with MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_TRACKING_PASSWORD exported: the basic-auth
    app, the taxi user with EDIT, and neither password on a command line or in a file of var/."""
    admin, taxi = (secrets.token_urlsafe(24) for _ in range(2))
    ports = {"LUIGID_PORT": str(free_port()), "MLFLOW_PORT": str(free_port())}
    env = {**os.environ, "TAXI_VAR": str(tmp_path / "var"), "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
           "MLFLOW_TRACKING_PASSWORD": taxi, **ports}
    env.pop("LUIGI_CONFIG_PATH", None)
    services = str(ROOT / "scripts" / "services")
    url = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    try:
        with ProcessListing() as listing:
            started = subprocess.run([services, "start"], capture_output=True, text=True, env=env, timeout=300)
        stranger = requests.get(f"{url}{API}/experiments/get-by-name", params={"experiment_name": EXPERIMENT},
                                timeout=30)
        user = requests.get(f"{url}{API}/experiments/get-by-name", params={"experiment_name": EXPERIMENT},
                            auth=("taxi", taxi), timeout=30)
        environments = {name: Path(f"/proc/{(tmp_path / 'var' / f'{name}.pid').read_text().strip()}/environ")
                        .read_bytes() for name in ("luigid", "mlflow")}
    finally:
        stopped = subprocess.run([services, "stop"], capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0 and stopped.returncode == 0, started.stderr + stopped.stderr
    assert f"{url}: experiment {EXPERIMENT} (id 1): EDIT for taxi" in started.stdout
    assert (stranger.status_code, user.status_code) == (401, 200)
    # the admin's password reaches MLflow's process, and no other service's
    assert admin.encode() in environments["mlflow"] and admin.encode() not in environments["luigid"]
    texts = {str(path): path.read_bytes() for path in (tmp_path / "var").rglob("*") if path.is_file()}
    texts["ps -ef"] = "\n".join(listing.samples).encode()
    texts["output"] = (started.stdout + started.stderr).encode()
    assert "mlflow server --app-name basic-auth" in texts["ps -ef"].decode()
    assert [where for where, text in texts.items() for secret in (admin, taxi) if secret.encode() in text] == []


def test_on_postgresql_the_cluster_server_refuses_strangers_and_knows_its_users(tmp_path):
    """systemd/cluster/mlflow.service.d: users and grants in the database mlflow_auth (artifacts in a folder here,
    not the bucket)."""
    pg = Postgres().start()
    server = AuthMlflow(tmp_path / "mlflow", pg=pg, artifacts=str(tmp_path / "artifacts"))
    try:
        server.start()
        config = write_config(tmp_path / "cluster.cfg", {"mlflow": {"tracking_uri": server.url}})
        users = server.make_users(config)
        experiment_id = admin_call(server, "GET", f"{API}/experiments/get-by-name?experiment_name={EXPERIMENT}")[
            "experiment"]["experiment_id"]
        grant = {"username": "taxi", "resource_type": "experiment", "resource_id": experiment_id}
        admin_call(server, "POST", "/api/3.0/mlflow/users/permissions/revoke", json=grant)
        admin_call(server, "POST", GRANT, json={**grant, "permission": "MANAGE"})  # as if taxi had created it
        again = server.make_users(config)
        permission = admin_call(server, "GET", "/api/3.0/mlflow/users/permissions/get", params=grant)["permission"]
        stranger = requests.get(f"{server.url}{API}/experiments/get-by-name", params={"experiment_name": EXPERIMENT},
                                timeout=30)
        taxi = server.as_user(server.taxi).get(f"{server.url}{API}/experiments/get-by-name",
                                               params={"experiment_name": EXPERIMENT}, timeout=30)
        with pg.connect("mlflow_auth") as db:
            known = sorted(row[0] for row in db.execute("SELECT username FROM users"))
        dump = pg.dump("mlflow_auth") + pg.dump("mlflow") + server.log.read_text()
    finally:
        server.stop()
        pg.stop()
    assert users.returncode == again.returncode == 0, users.stderr + again.stderr
    assert f"{server.url}: user taxi: password set" in again.stdout  # a rerun updates, nothing fails
    assert permission == "EDIT"  # and takes back more than EDIT
    assert stranger.status_code == 401 and taxi.status_code == 200
    assert taxi.json()["experiment"]["name"] == EXPERIMENT
    assert known == ["admin", "taxi"]
    assert [name for name, secret in server.secrets.items() if secret in dump] == []


def test_a_cluster_month_with_the_login_in_the_environment_registers_and_moves_the_alias(tmp_path_factory, tlc_dir):
    """tests/support/cluster.py with the MLflow server of the cluster drop-in: a worker host (scripts/worker) and a
    submitting host (scripts/backfill), each with the S3 keys and the pipeline's login in its environment only."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start(services=False)
    try:
        cluster.upload(write_months(cluster.workdir, tlc_dir, [(2022, 1), (2022, 2)], 5_000))
        server = cluster.mlflow = AuthMlflow(cluster.workdir / "mlflow", pg=cluster.pg, env={
            "MLFLOW_S3_ENDPOINT_URL": cluster.s3.endpoint, **cluster.s3.env}).start()
        cluster.luigid = luigid_server(cluster.workdir / "luigid", cluster.pg, "luigid")
        config = cluster.profile(cluster.base / "cluster.cfg", {"taxi": {"threads": "1"},
                                                                  "TuneHyperparams": SMALL_TUNING})
        users = server.make_users(config)
        assert users.returncode == 0, users.stderr
        worker, submitter = cluster.add_hosts("worker-1", "submitter")
        env = {**cluster.s3.env, **server.taxi.env, "PYTHONPATH": str(ROOT)}  # this checkout's taxi on every host
        with ProcessListing() as listing:
            worker_host(worker, config, env)
            backfill = submitter.start([str(ROOT / "scripts" / "backfill"), "green", "2022-01", "2022-01"], config,
                                       env)
            backfill.wait(900)
        with cluster.pg.connect("mlflow") as db:
            champion = db.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
                                  (MODEL, "champion")).fetchall()
            registered = db.execute("SELECT count(*) FROM model_versions WHERE name = %s", (MODEL,)).fetchone()[0]
        texts = {str(path): path.read_bytes() for path in cluster.workdir.rglob("*.log")}
        texts.update({f"PostgreSQL database {name}": cluster.pg.dump(name).encode()
                      for name in ("mlflow", "mlflow_auth", "luigid")})
        texts.update({key: cluster.s3.client().get_object(Bucket="taxi", Key=key)["Body"].read()
                      for key in cluster.s3.keys("taxi")})
        texts["ps -ef"] = "\n".join(listing.samples).encode()
    finally:
        cluster.stop()
    assert backfill.returncode in (0, 25), submitter.log.read_text()[-3000:]  # 25: tasks the worker host ran
    assert (champion, registered) == ([(1,)], 1)
    assert "scripts/worker --workers 1" in texts["ps -ef"].decode() and any(
        key.endswith("/registration.json") for key in texts)
    leaks = [(where, name) for where, text in texts.items() for name, secret in server.secrets.items()
             if secret.encode() in text]
    assert leaks == []
