"""The proxy in front of luigid and MLflow (scripts/proxy, config/nginx/taxi.conf: Debian's nginx), with real luigid,
a real MLflow server with its basic-auth app and real Luigi workers that log in the way docs/operations.md says
(a netrc file named by NETRC, the proxy's CA in REQUESTS_CA_BUNDLE).

nginx sees each 127.x.y.z source address as another client: the workers come from 127.0.0.1, a client guessing
passwords from 127.0.0.2, and each check of refused routes from an address of its own, so that its few failures
stay below the throttle.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug.security import generate_password_hash

from tests.support.luigi_process import LuigiProcess
from tests.support.nginx import OS_USER, Proxy, copy_script, mlflow_auth_service, session, write_netrc
from tests.support.paths import BIN, ROOT
from taxi.web.app import create_app
from taxi.web.settings import Settings
from tests.support.services import free_port, luigid_service

USER, PASSWORD = "taxi", "pw-" + secrets.token_hex(12)
ADMIN_PASSWORD = "admin-" + secrets.token_hex(12)
WRONG = "wrong-" + secrets.token_hex(6)
SECRETS = (PASSWORD, ADMIN_PASSWORD)
LUIGID_ROUTES = [  # (method, path): the API, read and write, and the visualiser's pages and files
    ("GET", "/"), ("GET", "/api/graph"), ("GET", '/api/task_list?data={"status":"PENDING"}'),
    ("POST", "/api/add_task"), ("POST", "/api/set_task_status_message"), ("GET", "/static/visualiser/index.html"),
    ("GET", "/static/visualiser/js/visualiserApp.js"), ("GET", "/history"), ("GET", "/history/by_task_id/Touch_x"),
]
MLFLOW_ROUTES = [("GET", "/api/2.0/mlflow/experiments/search?max_results=5"),
                 ("POST", "/api/2.0/mlflow/registered-models/create"), ("GET", "/")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """luigid and MLflow (basic-auth) on loopback ports, the proxy in front of both."""
    folder = tmp_path_factory.mktemp("proxy")
    luigid = luigid_service(folder / "luigid").start()
    mlflow = mlflow_auth_service(folder / "mlflow", ADMIN_PASSWORD)
    proxy = Proxy(luigid.port, mlflow.port, {USER: PASSWORD})
    try:
        yield luigid, mlflow.start(), proxy.start()
    finally:
        proxy.remove()
        mlflow.stop()
        luigid.stop()


def client_env(folder: Path, proxy: Proxy, password: str | None = PASSWORD) -> dict[str, str]:
    """A worker host's environment: its netrc (none if `password` is None), the proxy's CA, a HOME of its own."""
    env = {"REQUESTS_CA_BUNDLE": str(proxy.cert), "HOME": str(folder), "PYTHONPATH": str(ROOT)}
    if password is not None:
        env["NETRC"] = str(write_netrc(folder / "netrc", USER, password))
    return env


def write_profile(path: Path, scheduler_url: str) -> Path:
    path.write_text(f"[core]\nlocal_scheduler = false\nscheduler_url = {scheduler_url}\nno_lock = true\n"
                    "rpc-retry-attempts = 2\nrpc-retry-wait = 1\n")
    return path


def luigid_tasks(luigid, status: str) -> dict[str, dict]:
    """The tasks luigid itself (on its loopback port, no proxy) has in `status`: task id -> task."""
    answer = requests.get(f"{luigid.url}/api/task_list", params={"data": json.dumps({"status": status})}, timeout=10)
    return answer.json()["response"]


@pytest.mark.parametrize("method,path", LUIGID_ROUTES)
def test_every_luigid_route_refuses_without_or_with_wrong_credentials(stack, method, path):
    luigid, _, proxy = stack
    client = session(f"127.0.0.{10 + LUIGID_ROUTES.index((method, path))}")
    body = {"data": json.dumps({"task_id": "Touch_x", "status": "PENDING", "worker": "intruder",
                                "status_message": "owned"})}
    for auth in (None, (USER, WRONG), ("intruder", PASSWORD)):
        answer = client.request(method, proxy.luigid_url + path, data=body, auth=auth, verify=str(proxy.cert))
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == 'Basic realm="luigid"', auth
    assert "Touch_x" not in luigid_tasks(luigid, "PENDING")
    allowed = client.request(method, proxy.luigid_url + path, auth=(USER, PASSWORD), verify=str(proxy.cert))
    assert allowed.status_code != 401 and "luigid" not in allowed.headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize("method,path", MLFLOW_ROUTES)
def test_mlflow_refuses_without_or_with_wrong_credentials(stack, method, path):
    _, _, proxy = stack
    client = session(f"127.0.0.{30 + MLFLOW_ROUTES.index((method, path))}")
    for auth in (None, ("admin", WRONG)):
        answer = client.request(method, proxy.mlflow_url + path, json={"name": "intruders-model"}, auth=auth,
                                verify=str(proxy.cert))
        assert answer.status_code == 401, auth
    models = client.get(proxy.mlflow_url + "/api/2.0/mlflow/registered-models/search", auth=("admin", ADMIN_PASSWORD),
                        verify=str(proxy.cert))
    assert models.status_code == 200 and models.json().get("registered_models", []) == []


class Guesser:
    """A client on 127.0.0.2 that keeps `threads` wrong passwords for luigid under way until stopped; each answer's
    status is recorded (a request still delayed after `timeout` seconds is given up, freeing its connection)."""

    def __init__(self, proxy: Proxy, threads: int = 30, timeout: float = 4.0):
        self.proxy, self.timeout, self.stop = proxy, timeout, threading.Event()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self.guess, daemon=True) for _ in range(threads)]

    def guess(self) -> None:
        client = session("127.0.0.2")
        while not self.stop.is_set():
            try:
                answer = client.get(self.proxy.luigid_url + "/api/graph", auth=(USER, "guess-" + secrets.token_hex(4)),
                                    verify=str(self.proxy.cert), timeout=self.timeout)
                self.statuses.append(answer.status_code)
            except requests.Timeout:
                pass

    def __enter__(self) -> "Guesser":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)


def test_repeated_failures_are_throttled_while_a_worker_with_credentials_keeps_working(stack, tmp_path):
    luigid, _, proxy = stack
    guesser = session("127.0.0.2")
    started = time.monotonic()
    first = [guesser.get(proxy.luigid_url + "/api/graph", auth=(USER, f"guess-{i}"), verify=str(proxy.cert))
             for i in range(5)]
    assert [a.status_code for a in first] == [401] * 5 and time.monotonic() - started < 3  # a few typos: no wait
    guessing = time.monotonic()
    with Guesser(proxy) as guesses:
        time.sleep(3)
        # the guessing client is refused before any password check: the right one gets 429 too
        right = guesser.get(proxy.luigid_url + "/api/graph", auth=(USER, PASSWORD), verify=str(proxy.cert))
        assert right.status_code == 429
        # meanwhile a Luigi run of 127.0.0.1, with the right credentials, runs its tasks through the proxy
        env = client_env(tmp_path, proxy)
        run = LuigiProcess(tmp_path, write_profile(tmp_path / "profile.cfg", proxy.luigid_url), "Pair", "--folder",
                           str(tmp_path / "out"), "--workers", "2", name="run", env=env,
                           module="tests.support.proxy_tasks")
        assert run.finish(timeout=120) == 0, run.log[-3000:]
    guessing = time.monotonic() - guessing
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first", "second"]
    done = [task["params"]["name"] for task in luigid_tasks(luigid, "DONE").values()
            if task["name"] == "Touch" and task["params"]["folder"] == str(tmp_path / "out")]
    assert sorted(done) == ["first", "second"]
    # 30 guesses at a time, the whole time: most refused at once, and at most 10 a minute had their password checked
    # (the first 5 went through at once, before; the rest of a burst may still have been queued)
    assert guesses.statuses.count(429) > guesses.statuses.count(401)
    assert guesses.statuses.count(401) <= 2 + guessing / 6, (guesses.statuses.count(401), guessing)


def test_a_client_that_hangs_up_on_slow_failures_is_throttled_all_the_same(stack):
    """Hanging up does not end a failed login's wait: a client that sends guesses and gives up on any answer slower
    than 0.3 s (a right password is answered at once) has only a handful checked, then even the right one is
    refused, though it has nothing under way any more."""
    _, _, proxy = stack
    guesser, answers = session("127.0.0.8"), []
    for i in range(40):
        try:
            answers.append(guesser.get(proxy.luigid_url + "/api/graph", auth=(USER, f"guess-{i}"),
                                       verify=str(proxy.cert), timeout=0.3).status_code)
        except requests.Timeout:
            answers.append(None)
    assert answers.count(401) <= 6 and 429 in answers, answers
    assert guesser.get(proxy.luigid_url + "/api/graph", auth=(USER, PASSWORD), verify=str(proxy.cert)).status_code \
        == 429


def test_logins_that_succeed_and_requests_without_credentials_are_not_counted(stack):
    """A worker polls luigid every second or two, for days: 200 quick polls are 200 answers, none slowed down. A
    browser's first request carries no credentials: 20 of those are 401 at once, and its login then succeeds."""
    _, _, proxy = stack
    worker, browser = session("127.0.0.6"), session("127.0.0.7")
    started = time.monotonic()
    polls = [worker.post(proxy.luigid_url + "/api/is_paused", data={"data": "{}"}, auth=(USER, PASSWORD),
                         verify=str(proxy.cert)).status_code for _ in range(200)]
    assert polls == [200] * 200 and time.monotonic() - started < 20
    started = time.monotonic()
    asks = [browser.get(proxy.luigid_url + "/", verify=str(proxy.cert)).status_code for _ in range(20)]
    assert asks == [401] * 20 and time.monotonic() - started < 4
    assert browser.get(proxy.luigid_url + "/", auth=(USER, PASSWORD), verify=str(proxy.cert)).status_code == 200


def test_the_proxy_refuses_to_start_as_root_or_without_its_files():
    """As root, nginx would run its workers as nobody; without a file, nginx would stop with its own message."""
    folder = Path(tempfile.mkdtemp(prefix="taxi-proxy-"))
    try:
        folder.chmod(0o755)
        script = copy_script(folder)
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(folder / "none"),
               "RUNTIME_DIRECTORY": str(folder / "run")}
        as_root = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
        assert as_root.returncode == 1 and "run it as an unprivileged user" in as_root.stderr
        as_user = subprocess.run(["runuser", "-u", OS_USER, "--", str(script)], env=env, capture_output=True,
                                 text=True, timeout=30)
        assert as_user.returncode == 1 and f"cannot read {folder}/none/cert.pem: set PROXY_CERT" in as_user.stderr
    finally:
        shutil.rmtree(folder)


def test_failed_mlflow_logins_are_throttled(stack):
    """MLflow's basic-auth app has no throttle of its own: the proxy counts its 401s."""
    _, _, proxy = stack
    guesser, other = session("127.0.0.3"), session("127.0.0.4")
    url = proxy.mlflow_url + "/api/2.0/mlflow/experiments/search?max_results=5"
    times = []
    for i in range(8):
        started = time.monotonic()
        answer = guesser.get(url, auth=("admin", f"guess-{i}"), verify=str(proxy.cert))
        times.append(time.monotonic() - started)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
    assert max(times[:5]) < 3 and min(times[6:]) > 4, times  # past the first few, each failure waits
    started = time.monotonic()
    assert other.get(url, auth=("admin", ADMIN_PASSWORD), verify=str(proxy.cert)).status_code == 200
    assert time.monotonic() - started < 4


def test_no_credential_in_any_log_or_process_listing_even_with_luigid_down(stack, tmp_path):
    luigid, mlflow, proxy = stack
    dead = Proxy(free_port(), mlflow.port, {USER: PASSWORD}).start()  # luigid down behind the proxy: 502
    listings, env = [], client_env(tmp_path, proxy)
    try:
        for name, url in [("up", proxy.luigid_url), ("luigid-down", dead.luigid_url),
                          ("proxy-down", f"https://127.0.0.1:{free_port()}")]:
            run = LuigiProcess(tmp_path, write_profile(tmp_path / f"{name}.cfg", url), "Pair", "--folder",
                               str(tmp_path / name), name=name, env=env, module="tests.support.proxy_tasks")
            while run.proc.poll() is None:
                listings.append(subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout)
                time.sleep(0.2)
            if name == "up":
                assert run.proc.returncode == 0, run.log[-3000:]
            else:  # Luigi's own line naming the scheduler it cannot reach is there, without the password
                port = url.rsplit(":", 1)[1]
                assert run.proc.returncode != 0
                assert re.search(rf"Failed connecting to remote scheduler '\S*127\.0\.0\.1:{port}'", run.log)
    finally:
        dead_logs = dead.logs()
        dead.remove()
    texts = {str(path): path.read_text(errors="replace") for path in sorted(tmp_path.rglob("*"), key=by_logs_first)
             if path.is_file() and path.name != "netrc"}  # the runs' logs and outputs, their profiles
    texts.update({"proxy": proxy.logs(), "proxy in front of no luigid": dead_logs, "luigid": luigid.log.read_text(),
                  "mlflow": mlflow.log.read_text(), **{f"ps {i}": listing for i, listing in enumerate(listings)}})
    assert len(listings) > 5 and any("tests.support.proxy_tasks" in listing for listing in listings)
    for name, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a password in {name}"


def by_logs_first(path: Path) -> tuple[bool, str]:
    return path.suffix != ".log", str(path)


@pytest.mark.parametrize("case", ["wrong password", "no netrc", "untrusted certificate", "password in the URL"])
def test_a_worker_turned_away_fails_at_once_with_one_line(stack, tmp_path, case):
    _, _, proxy = stack
    env = client_env(tmp_path, proxy, WRONG if case == "wrong password" else None if case == "no netrc" else PASSWORD)
    url = proxy.luigid_url
    if case == "untrusted certificate":
        env["REQUESTS_CA_BUNDLE"] = str(make_other_ca(tmp_path))
    if case == "password in the URL":
        url = f"https://{USER}:{PASSWORD}@127.0.0.1:{proxy.luigid_port}"
    env["LUIGI_CONFIG_PATH"] = str(write_profile(tmp_path / "profile.cfg", url))
    started = time.monotonic()
    done = subprocess.run([str(ROOT / "scripts/worker"), "--workers", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and time.monotonic() - started < 20
    assert len(output.splitlines()) == 1, output
    shown = f"https://127.0.0.1:{proxy.luigid_port}" if case != "password in the URL" else \
        f"https://***@127.0.0.1:{proxy.luigid_port}"
    assert f"the scheduler {'URL' if case == 'password in the URL' else 'at'} {shown}" in output
    assert {"wrong password": "set NETRC", "no netrc": "set NETRC", "untrusted certificate": "set REQUESTS_CA_BUNDLE",
            "password in the URL": "NETRC names"}[case] in output
    assert PASSWORD not in output and WRONG not in output


def test_the_check_lets_a_worker_with_credentials_through(stack, tmp_path):
    _, _, proxy = stack
    env = {**client_env(tmp_path, proxy), "PATH": "/usr/bin:/bin",
           "LUIGI_CONFIG_PATH": str(write_profile(tmp_path / "profile.cfg", proxy.luigid_url))}
    done = subprocess.run([str(BIN / "python"), "-m", "taxi.scheduler_access"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout + done.stderr == ""


def make_other_ca(folder: Path) -> Path:
    """A certificate for 127.0.0.1 that is not the proxy's."""
    other = folder / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(other / "key.pem"), "-out", str(other / "cert.pem")], check=True,
                   capture_output=True)
    return other / "cert.pem"


def test_the_operator_page_links_to_the_visualiser_through_the_proxy(stack, tmp_path):
    """The page reads luigid on its loopback port; its links lead operators' browsers to the proxy, which asks
    them for the proxy's password before it shows the visualiser."""
    luigid, _, proxy = stack
    operator = "operator password"
    app = create_app(Settings(store=str(tmp_path), tracking_uri="", scheduler_url=luigid.url, state=tmp_path / "state",
                              password_hash=generate_password_hash(operator), visualiser_url=proxy.luigid_url + "/"))
    page = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get("/login").text).group(1)
    assert page.post("/login", data={"csrf_token": token, "name": "Ada", "password": operator}).status_code == 302
    links = re.findall(r'href="([^"]+)"', page.get("/").text)
    assert proxy.luigid_url in links and luigid.url not in links
    browser = session("127.0.0.5")
    assert browser.get(proxy.luigid_url, verify=str(proxy.cert)).status_code == 401
    visualiser = browser.get(proxy.luigid_url, auth=(USER, PASSWORD), verify=str(proxy.cert))
    assert visualiser.status_code == 200 and "/static/visualiser/index.html" in visualiser.url
