"""The operator page (taxi.web) as an operator meets it: `python -m taxi.web` against a real luigid and `mlflow
server`, driven by headless Chromium (Debian's chromium and chromedriver, through Selenium): log in, a bad month
refused, a run started, watched to done, a task's log opened and its MLflow run followed. Then what it refuses: every
route without a session, a form without its CSRF token, a wrong password (throttled), shell metacharacters; two
submissions of one month at once make one run; and the web process never imports the pipeline."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import luigi
import luigi.configuration
import pytest
import requests
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug.security import generate_password_hash

from taxi import layout
from taxi.registry import model_name
from taxi.web.app import create_app
from taxi.web.auth import Throttle
from taxi.web.runs import Runs
from taxi.web.settings import HASH_ENV, Settings
from tests.support.browser import chromium
from tests.support.luigi_process import private_lock
from tests.support.paths import ROOT
from tests.support.runs import SMALL_TUNING, write_config
from tests.support.services import Service, free_port, luigid_service, mlflow_service, wait_until
from tests.support.store import one_file

OPERATOR = "Ada Operator"  # the login's name
RUN_TIMEOUT = 300  # seconds for one sampled month's RegisterModel (about 20 s here)
DOCS = ROOT / "docs"


@dataclasses.dataclass
class Site:
    url: str
    password: str
    workdir: Path
    store: Path
    state: Path
    mlflow: Service
    luigid: Service
    profile: Path

    def runs(self) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted((self.state / "runs").glob("*.json"))]


@pytest.fixture(scope="module")
def site(tmp_path_factory, sampled_tlc) -> Site:
    """luigid, an `mlflow server` and the page on free loopback ports, with a profile like config/central.cfg: the
    sampled months as source, a small tuning, task logs on and [web] url the page."""
    workdir = tmp_path_factory.mktemp("web")
    mlflow, luigid = mlflow_service(workdir / "mlflow"), luigid_service(workdir / "luigid")
    password, port = secrets.token_urlsafe(16), free_port()
    url = f"http://127.0.0.1:{port}"
    profile = write_config(workdir / "profile.cfg", {
        "core": {**private_lock(workdir), "local_scheduler": "false", "scheduler_url": luigid.url},
        "worker": {"task_process_context": "taxi.pipeline.tasklog.TaskLog"},
        "web": {"url": url},
        "taxi": {"source": str(sampled_tlc), "store": str(workdir / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": mlflow.url, "artifact_location": ""},
        "TuneHyperparams": SMALL_TUNING})
    page = Service("web", [sys.executable, "-m", "taxi.web", "serve", "--port", str(port), "--state",
                           str(workdir / "state")], port, "/login", workdir / "web.log",
                   env={"LUIGI_CONFIG_PATH": str(profile), HASH_ENV: generate_password_hash(password)})
    try:
        mlflow.start(), luigid.start(), page.start()
        yield Site(url, password, workdir, workdir / "store", workdir / "state", mlflow, luigid, profile)
    finally:
        page.stop()
        luigid.stop()
        mlflow.stop()


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def logged_in(site: Site) -> requests.Session:
    """A client with a session, as a browser has after logging in."""
    client = requests.Session()
    done = client.post(f"{site.url}/login", data={"csrf_token": csrf_token(client.get(f"{site.url}/login").text),
                                                  "name": OPERATOR, "password": site.password},
                         allow_redirects=False)
    assert done.status_code == 302, done.text
    return client


def submit(client: requests.Session, site: Site, **fields: str) -> requests.Response:
    """The run form posted with its CSRF token."""
    token = csrf_token(client.get(f"{site.url}/runs/new").text)
    return client.post(f"{site.url}/runs", data={"csrf_token": token, "last": "", **fields}, allow_redirects=False)


def finished(site: Site, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    record = site.state / "runs" / f"{run_id}.json"
    wait_until(lambda: json.loads(record.read_text())["exit_code"] is not None, f"run {run_id}", timeout)
    return json.loads(record.read_text())


def luigid_tasks(site: Site, status_: str) -> dict[str, dict]:
    query = {"data": json.dumps({"status": status_})}
    return requests.get(f"{site.luigid.url}/api/task_list", params=query, timeout=10).json()["response"]


def history_events(site: Site, family: str, event: str) -> list[tuple[str, str]]:
    """(task parameters as JSON, time) of each `event` of `family` in luigid's task history."""
    with sqlite3.connect(site.workdir / "luigid" / "history.db") as db:
        return db.execute("SELECT t.task_id, e.ts FROM task_events e JOIN tasks t ON e.task_id = t.id "
                          "WHERE t.name = ? AND e.event_name = ?", (family, event)).fetchall()


# ---------------------------------------------------------------------------------------------------------------
# In a real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


@dataclasses.dataclass
class BrowserRun:
    screenshots: Path
    form_error: str
    runs_after_error: list[dict]
    run: dict
    task_rows: list[tuple[str, str]]  # (task, status) as the run page shows them
    log_shown: str
    mlflow_link: str
    mlflow_page: str  # the MLflow page's URL after following the link
    months: list[list[str]]  # the months table's cells


@pytest.fixture(scope="module")
def browser_run(site, browser, tmp_path_factory) -> BrowserRun:
    """Log in, submit a month that is not a month, then green 2021-01 with seed 7, watch it to the end, open
    TrainModel's log and follow its MLflow link; a screenshot of each page (the README's among them in docs/)."""
    shots = tmp_path_factory.mktemp("screenshots")
    wait = WebDriverWait(browser, 30)

    def shot(name: str, docs: bool = False) -> None:
        browser.save_screenshot(str(shots / f"{name}.png"))
        if docs:
            shutil.copyfile(shots / f"{name}.png", DOCS / f"web-{name}.png")

    browser.get(site.url)
    wait.until(expected_conditions.url_contains("/login"))
    shot("login")
    browser.find_element(By.ID, "name").send_keys(OPERATOR)
    browser.find_element(By.ID, "password").send_keys(site.password)
    browser.find_element(By.ID, "login").click()
    wait.until(expected_conditions.title_contains("Months"))
    browser.get(f"{site.url}/runs/new")
    browser.find_element(By.ID, "first").send_keys("2021-13")
    browser.find_element(By.ID, "start").click()
    form_error = wait.until(expected_conditions.visibility_of_element_located((By.ID, "error-first"))).text
    shot("form-error")
    runs_after_error = site.runs()

    browser.find_element(By.ID, "first").clear()
    browser.find_element(By.ID, "first").send_keys("2021-01")
    Select(browser.find_element(By.ID, "color")).select_by_value("green")
    browser.find_element(By.ID, "seed").clear()
    browser.find_element(By.ID, "seed").send_keys("7")
    browser.find_element(By.ID, "start").click()
    wait.until(expected_conditions.url_contains("/runs/2"))
    WebDriverWait(browser, RUN_TIMEOUT).until(lambda b: b.find_element(By.TAG_NAME, "body")
                                              .get_attribute("data-finished") == "yes")
    run_id = browser.current_url.rsplit("/", 1)[1]
    rows = browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr")
    task_rows = [(row.find_elements(By.TAG_NAME, "td")[0].text, row.find_elements(By.TAG_NAME, "td")[1].text)
                 for row in rows]
    shot("run", docs=True)

    train = next(row for row in rows if row.get_attribute("data-task-id").startswith("TrainModel_"))
    train.find_element(By.LINK_TEXT, "log").click()
    log_shown = wait.until(expected_conditions.presence_of_element_located((By.ID, "log"))).text
    shot("task", docs=True)
    link = browser.find_element(By.CSS_SELECTOR, "#links a.mlflow")
    mlflow_link = link.get_attribute("href")
    link.click()
    WebDriverWait(browser, 60).until(lambda b: "training green 2021-01" in b.find_element(By.TAG_NAME, "body").text)
    mlflow_page = browser.current_url
    shot("mlflow")

    browser.get(site.url)
    table = wait.until(expected_conditions.presence_of_element_located((By.ID, "months-green")))
    months = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
              for row in table.find_elements(By.TAG_NAME, "tr")[1:]]
    shot("months", docs=True)
    return BrowserRun(shots, form_error, runs_after_error, finished(site, run_id, 10), task_rows, log_shown,
                      mlflow_link, mlflow_page, months)


def test_a_bad_month_is_refused_in_the_form_and_nothing_starts(browser_run, site):
    assert browser_run.form_error == "'2021-13' is not a month: write it as YYYY-MM, e.g. 2021-01"
    assert browser_run.runs_after_error == []
    assert (browser_run.screenshots / "form-error.png").stat().st_size > 10_000


def test_a_run_from_the_page_goes_through_luigid_to_done(browser_run, site):
    run = browser_run.run
    assert run["exit_code"] == 0 and run["outcome"] == "done"
    assert run["argv"] == ["--module", "taxi.tasks", "RegisterModel", "--color", "green", "--year", "2021",
                           "--month", "1", "--TuneHyperparams-seed", "7"]  # the one value changed in the form
    done = luigid_tasks(site, "DONE")
    families = ["DownloadMonth", "CleanMonth", "DownloadMonth", "CleanMonth", "BuildFeatures", "TuneHyperparams",
                "TrainModel", "RegisterModel"]
    assert sorted(title.split("(")[0] for title, _ in browser_run.task_rows) == sorted(families)
    assert {status_ for _, status_ in browser_run.task_rows} == {"DONE"}
    tune = next(task for task in done.values() if task["name"] == "TuneHyperparams")
    assert tune["params"]["seed"] == "7" and tune["params"]["max_evals"] == SMALL_TUNING["max_evals"]
    assert tune["params"]["num_boost_round"] == SMALL_TUNING["num_boost_round"]  # the profile's, kept by the form
    assert run["task_id"] in done
    assert len(history_events(site, "RegisterModel", "DONE")) >= 1  # in luigid's task history like any run
    registration = json.loads(one_file(site.store, layout.RUN, color="green", ym="2021-01",
                                       name=layout.REGISTRATION).read_text())
    assert registration["version"] == 1 and registration["tracking_uri"] == site.mlflow.url
    assert registration["task_id"] == run["task_id"]  # the page's plan named the task the worker ran


def test_the_task_log_is_the_store_s_file_and_links_to_the_mlflow_run(browser_run, site):
    train_id = next(t for t in luigid_tasks(site, "DONE") if t.startswith("TrainModel_"))
    stored = one_file(site.store, layout.TASK_LOG, family="TrainModel", task_id=train_id).read_text()
    assert browser_run.log_shown == stored.rstrip("\n")
    assert "running   TrainModel(color=green, year=2021, month=1)" in stored and "done      TrainModel(" in stored
    client = MlflowClient(site.mlflow.url)
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    [training] = client.search_runs([experiment], f"tags.`taxi.task_id` = '{train_id}'")
    assert browser_run.mlflow_link == f"{site.mlflow.url}/#/experiments/{experiment}/runs/{training.info.run_id}"
    assert browser_run.mlflow_page.startswith(browser_run.mlflow_link)
    # luigid links each task to its page here, which links to MLflow in one click
    assert luigid_tasks(site, "DONE")[train_id]["tracking_url"] == f"{site.url}/tasks/{train_id}"
    record = json.loads(one_file(site.store, layout.TASK_LOG_RECORD, family="TrainModel", task_id=train_id)
                        .read_text())
    assert record["outcome"] == "done" and record["links"] == [browser_run.mlflow_link]


def test_the_months_table_is_scripts_status_s_rows_with_links(browser_run, site):
    shown = subprocess.run([str(ROOT / "scripts" / "status"), "green"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "LUIGI_CONFIG_PATH": str(site.profile)})
    assert shown.returncode == 0, shown.stderr[-3000:]
    months = shown.stdout.split("\n\n", 1)[0]  # the trained months' table, before the scored months and the history
    printed = [re.split(r"\s{2,}", line) for line in months.splitlines()[2:] if line[:4].isdigit()]
    assert [cells[:-1] for cells in browser_run.months] == printed
    assert browser_run.months[0][:3] == ["2021-01", "v1", "champion"]
    page = logged_in(site).get(site.url).text
    version = MlflowClient(site.mlflow.url).get_model_version(model_name("green"), "1")
    for link in (f"{site.mlflow.url}/#/models/{model_name('green')}/versions/1",
                 f"/runs/{version.run_id}\"", f"{site.luigid.url}/history/by_task_id/{browser_run.run['task_id']}"):
        assert link in page
    report = re.search(r'href="(/reports/runs/green/2021-01/[^"]+/report\.md)"', page).group(1)
    stored = one_file(site.store, layout.RUN, color="green", ym="2021-01", name=layout.REPORT).read_text()
    assert f"<h1>{stored.splitlines()[0].removeprefix('# ')}</h1>" in logged_in(site).get(site.url + report).text


def report_folder(site: Site, ym: str) -> Path:
    """The run folder of the store's one report of green `ym`."""
    return one_file(site.store, layout.RUN, color="green", ym=ym, name=layout.REPORT).parent


def png_width(png: bytes) -> int:
    """The width a PNG file declares in its IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big")


def test_a_report_is_a_page_with_its_tables_and_plots(browser_run, site, browser):
    """The months page's report link opens the report as HTML: its tables, and each plot the markdown names loaded
    from the store (as wide as the stored PNG); its raw link downloads the stored bytes."""
    folder = report_folder(site, "2021-01")
    stored = (folder / layout.REPORT).read_bytes()
    browser.get(site.url)
    browser.find_element(By.CSS_SELECTOR, f'a[href$="{folder.name}/{layout.REPORT}"]').click()
    report = WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "report")))
    assert report.find_element(By.TAG_NAME, "h1").text == stored.decode().splitlines()[0].removeprefix("# ")
    tables = report.find_elements(By.TAG_NAME, "table")
    assert len(tables) == stored.decode().count("\n|---")  # one per table the markdown holds
    headers = [[cell.text for cell in table.find_elements(By.TAG_NAME, "th")] for table in tables]
    assert ["RMSE (minutes)", "value"] in headers and ["step", "seconds"] in headers
    named = re.findall(r"!\[[^]]*\]\(([^)]+)\)", stored.decode())
    assert sorted(named) == sorted(name for name in layout.REPORT_FILES if name != layout.REPORT)
    images = report.find_elements(By.TAG_NAME, "img")
    WebDriverWait(browser, 30).until(lambda b: all(b.execute_script("return arguments[0].complete", img)
                                                   for img in images))
    shown = {img.get_attribute("src").rsplit("/", 1)[1]: browser.execute_script("return arguments[0].naturalWidth",
                                                                                 img) for img in images}
    assert shown == {name: png_width((folder / name).read_bytes()) for name in named}
    assert all(img.get_attribute("src").startswith(f"{site.url}/reports/") for img in images)
    raw = browser.find_element(By.ID, "raw").get_attribute("href")
    drift = next(heading for heading in report.find_elements(By.TAG_NAME, "h2") if heading.text == "Drift")
    browser.execute_script("arguments[0].scrollIntoView()", drift)
    browser.save_screenshot(str(DOCS / "web-report.png"))  # docs/web.md's: a table and a plot
    download = logged_in(site).get(raw)
    assert download.status_code == 200 and download.content == stored
    assert download.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert download.headers["Content-Disposition"] == \
        f'attachment; filename="green-2021-01-{folder.name}-{layout.REPORT}"'


HOSTILE = """# Hostile <script>window.pwned = 1; document.title = "pwned"</script>

<img src="x" onerror="window.pwned = 2">

[click me](javascript:window.pwned=3) ![elsewhere](https://evil.example/x.png) ![tuning](tuning.png)

| cell | cell |
|---|---|
| <script>window.pwned = 4</script> | <a href="javascript:window.pwned=5">raw html</a> |
"""


def test_a_report_holding_html_shows_it_as_text_and_runs_nothing(browser_run, site, browser):
    """A report whose text holds a script, an image with onerror, javascript: links and another site's image: the
    page shows the HTML as text, no script runs (the test clicks the links), and only the report's plot loads."""
    folder = site.store / "runs" / "green" / "2020-02" / "v1-0123456789"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layout.REPORT).write_text(HOSTILE)
    plot = (report_folder(site, "2021-01") / layout.TUNING_PLOT).read_bytes()
    (folder / layout.TUNING_PLOT).write_bytes(plot)
    page = f"{site.url}/reports/runs/green/2020-02/{folder.name}/{layout.REPORT}"
    browser.get(page)
    report = WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "report")))
    for link in report.find_elements(By.CSS_SELECTOR, "a"):
        link.click()
    text = report.text
    for shown in ('Hostile <script>window.pwned = 1; document.title = "pwned"</script>',
                  '<img src="x" onerror="window.pwned = 2">', "[click me](javascript:window.pwned=3)",
                  "<script>window.pwned = 4</script>", '<a href="javascript:window.pwned=5">raw html</a>'):
        assert shown in text
    assert browser.current_url == page and browser.title == "Report · taxi"
    assert browser.execute_script("return window.pwned") is None
    assert browser.execute_script("return document.querySelectorAll('#report script, #report [onerror], "
                                  "#report [href^=javascript], #report iframe').length") == 0
    images = {img.get_attribute("alt"): img for img in report.find_elements(By.TAG_NAME, "img")}
    assert images["elsewhere"].get_attribute("src") is None  # another site's image: no source at all
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return arguments[0].complete", images["tuning"]))
    assert browser.execute_script("return arguments[0].naturalWidth", images["tuning"]) == png_width(plot)


INLINE_SCRIPT = """const script = document.createElement("script");
script.textContent = "window.inline_ran = true";
document.body.appendChild(script);
return window.inline_ran === true;"""


def test_the_report_page_runs_no_script_of_its_own_either(browser_run, site, browser):
    """Its Content-Security-Policy forbids scripts: one inserted into the page does not run, where the months page
    (whose policy allows the pages' own inline scripts) runs it."""
    folder = report_folder(site, "2021-01")
    browser.get(f"{site.url}/reports/{folder.relative_to(site.store).as_posix()}/{layout.REPORT}")
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "report")))
    assert browser.execute_script(INLINE_SCRIPT) is False
    browser.get(site.url)
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.ID, "months-green")))
    assert browser.execute_script(INLINE_SCRIPT) is True


def test_a_report_s_plots_and_raw_file_need_a_session(browser_run, site):
    folder = report_folder(site, "2021-01").relative_to(site.store).as_posix()
    for path in (f"/reports/{folder}/{layout.REPORT}", f"/reports/{folder}/{layout.DRIFT_PLOT}",
                 f"/raw/{folder}/{layout.REPORT}"):
        answer = requests.get(site.url + path, allow_redirects=False, timeout=30)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login"), path
        assert logged_in(site).get(site.url + path).status_code == 200, path


def test_a_store_of_another_registry_shows_no_rows_and_names_both_registries(browser_run, site):
    """The page's store recorded as serving another registry: the months page shows that error, not the rows."""
    record = site.store / layout.REGISTRY_RECORD
    served = record.read_text()
    other = {**json.loads(served), "experiment_id": "7", "tracking_uri": "http://elsewhere:5000"}
    record.write_text(json.dumps(other))
    try:
        page = logged_in(site).get(site.url).text
        champions = logged_in(site).get(f"{site.url}/champions").text
    finally:
        record.write_text(served)
    assert f"OtherRegistry: the store {site.store} serves the registry at http://elsewhere:5000" in champions
    assert "/champions/green/rollback" not in champions
    assert f"OtherRegistry: the store {site.store} serves the registry at http://elsewhere:5000 (experiment 7" in page
    assert f"but this is the registry at {site.mlflow.url}" in page
    assert "/reports/runs/" not in page and "/reports/runs/" in logged_in(site).get(site.url).text


def test_the_page_s_secrets_and_mlflow_s_server_secrets_stay_out_of_the_runs_environment(tmp_path):
    """The environment the page gives the runs it starts (read in a process of its own, as the page starts): all of
    its own but the password hash, the systemd credentials folder and MLflow's server-side secrets."""
    profile = write_config(tmp_path / "profile.cfg", {
        "core": {"local_scheduler": "false", "scheduler_url": "http://127.0.0.1:9"},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}, "taxi": {"store": str(tmp_path / "store")}})
    private = {HASH_ENV: generate_password_hash("twelve chars or more"), "CREDENTIALS_DIRECTORY": str(tmp_path),
               "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(16),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(16)}
    script = ("import json, pathlib, sys; from taxi.web.settings import from_config; "
              "print(json.dumps(from_config(pathlib.Path(sys.argv[1])).run_env))")
    read = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LUIGI_CONFIG_PATH": str(profile), "TAXI_SOURCE": "/srv/tlc",
                                            **private})
    assert read.returncode == 0, read.stderr[-2000:]
    run_env = json.loads(read.stdout.strip().splitlines()[-1])
    assert not set(private) & set(run_env)
    assert (run_env["LUIGI_CONFIG_PATH"], run_env["TAXI_SOURCE"]) == (str(profile), "/srv/tlc")


def test_a_failed_run_shows_the_failed_task_and_its_log(site):
    """2021-02 needs 2021-03, which the mirror lacks: the download fails, the run exits [retcode] task_failed."""
    client = logged_in(site)
    answer = submit(client, site, color="green", first="2021-02")
    assert answer.status_code == 302, answer.text
    run = finished(site, answer.headers["Location"].rsplit("/", 1)[1])
    assert run["exit_code"] == 30 and run["outcome"] == "task failed"
    shown = client.get(f"{site.url}/api/runs/{run['id']}").json()
    failed = [task for task in shown["tasks"] if task["status"] == "FAILED"]
    assert [task["title"] for task in failed] == ["DownloadMonth(color=green, year=2021, month=3)"]
    page = client.get(site.url + failed[0]["page"]).text
    assert "MonthNotPublished: " in page and "green_tripdata_2021-03.parquet does not exist" in page


# ---------------------------------------------------------------------------------------------------------------
# What it refuses


def probe_path(rule) -> str:
    """A path of `rule` with a plausible value for each of its arguments."""
    values = {"run_id": "20260101-000000-abcdef", "task_id": "TrainModel_green_1_2021_7449fdcbb1",
              "path": "runs/green/2021-01/v1-0123456789/report.md"}
    return rule.rule.replace("<path:path>", values["path"]).replace("<run_id>", values["run_id"]) \
        .replace("<task_id>", values["task_id"])


def test_without_a_session_every_page_and_api_call_is_refused(site, tmp_path):
    """Every route of the app's url_map and each of its methods, over HTTP to the served page, without a cookie:
    pages redirect to the login page, the API answers 401; only the login page itself answers."""
    app = create_app(Settings(store=str(tmp_path), tracking_uri="", scheduler_url=site.luigid.url,
                              state=tmp_path / "state", password_hash="scrypt:unused"))
    probed = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            answer = requests.request(method, site.url + probe_path(rule), allow_redirects=False, timeout=30)
            probed.append(rule.endpoint)
            if rule.endpoint == "login":  # the one page answered without a session: the form (a POST lacks its token)
                assert answer.status_code in (200, 400), (method, answer.status_code)
                continue
            if rule.rule.startswith("/api/"):
                assert answer.status_code == 401 and answer.json() == {"error": "log in first"}, rule
            else:
                assert answer.status_code == 302, (method, rule, answer.status_code)
                assert answer.headers["Location"].startswith("/login"), rule
    assert len(set(probed)) >= 10 and "login" in probed


def test_a_form_without_its_csrf_token_is_refused(site):
    client = logged_in(site)
    client.get(f"{site.url}/runs/new")  # the session holds a token now: a forged one is compared with it
    before = site.runs()
    for path, data in (("/runs", {"color": "green", "first": "2023-01", "last": ""}), ("/logout", {}),
                       ("/login", {"password": site.password})):
        answer = client.post(site.url + path, data=data, allow_redirects=False)
        assert answer.status_code == 400 and "CSRF token is missing" in answer.text, path
        forged = client.post(site.url + path, data={**data, "csrf_token": "forged"}, allow_redirects=False)
        assert forged.status_code == 400 and "CSRF token is invalid" in forged.text, path
    assert site.runs() == before
    assert client.get(site.url, allow_redirects=False).status_code == 200  # still logged in: logout was refused


def test_logging_out_ends_the_session(site):
    client = logged_in(site)
    token = csrf_token(client.get(f"{site.url}/runs/new").text)
    answer = client.post(f"{site.url}/logout", data={"csrf_token": token}, allow_redirects=False)
    assert answer.status_code == 302 and answer.headers["Location"] == "/login"
    assert client.get(f"{site.url}/runs/new", allow_redirects=False).headers["Location"].startswith("/login")
    assert client.get(f"{site.url}/api/runs/20260101-000000-abcdef").status_code == 401


def log_in_with_next(site: Site, target: str) -> str:
    """Where the login sends a browser that came with `?next=target`."""
    client = requests.Session()
    token = csrf_token(client.get(f"{site.url}/login").text)
    answer = client.post(f"{site.url}/login", params={"next": target}, data={"csrf_token": token, "name": OPERATOR,
                                                                           "password": site.password},
                         allow_redirects=False)
    assert answer.status_code == 302, (target, answer.status_code)
    return answer.headers["Location"]


def test_login_follows_next_only_to_a_path_of_this_site(site):
    """A page asked for without a session comes back after the login; any other site, however written (browsers
    drop tabs and newlines, read a backslash as a slash), is replaced by the months page."""
    asked = requests.get(f"{site.url}/runs/new?seed=7", allow_redirects=False).headers["Location"]
    assert asked.startswith("/login?next=")
    client = requests.Session()
    token = csrf_token(client.get(site.url + asked).text)
    back = client.post(site.url + asked, data={"csrf_token": token, "name": OPERATOR, "password": site.password},
                       allow_redirects=False)
    assert back.headers["Location"] == "/runs/new?seed=7"
    assert log_in_with_next(site, "/tasks/TrainModel_green_1_2021_7449fdcbb1") == \
        "/tasks/TrainModel_green_1_2021_7449fdcbb1"
    for elsewhere in ("https://evil.example/", "//evil.example/", "///evil.example/", "/\\evil.example/",
                      "\\\\evil.example/", "/\t/evil.example/", "/\n/evil.example/", "\t//evil.example/",
                      "https:evil.example", "javascript:alert(1)", "evil.example"):
        assert log_in_with_next(site, elsewhere) == "/", elsewhere


def test_a_task_id_luigi_would_not_make_is_refused_and_nothing_outside_the_logs_is_read(site):
    """`.._x` would name the folder `logs/../.._x`, outside the task logs: an attempt planted there is never shown;
    a task id as luigid makes them is answered (luigid and the store simply have no such task)."""
    secret = secrets.token_hex(16)
    planted = site.store / ".._x"
    planted.mkdir(parents=True, exist_ok=True)
    (planted / "a.json").write_text(json.dumps({"task_id": ".._x", "attempt": "a", "host": "h", "pid": 1,
                                                "started": "2026-01-01T00:00:00+00:00", "finished": None,
                                                "outcome": "running", "links": [], "error": None}))
    (planted / "a.log").write_text(secret)
    client = logged_in(site)
    for bad in (".._x", "x.._y", ".._x.json"):
        for page in (f"/tasks/{bad}", f"/api/tasks/{bad}"):
            answer = client.get(site.url + page, allow_redirects=False)
            assert answer.status_code == 404 and secret not in answer.text, page
    good = "TrainModel_green_1_2020_0123456789"  # as luigid makes them, of a task no test runs
    assert client.get(f"{site.url}/tasks/{good}").status_code == 200
    assert client.get(f"{site.url}/api/tasks/{good}").json()["attempts"] == []


def test_a_report_path_outside_the_reports_is_refused(site):
    """Only a report or a plot of a run folder is served: not another file of a run folder, not a file outside the
    store (the session key in the state folder beside it, through an encoded `..`)."""
    folder = site.store / "runs" / "green" / "2020-01" / "v1-0123456789"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "booster.ubj").write_bytes(b"not a report")
    (folder / layout.REPORT).write_text("# a report")
    client = logged_in(site)
    assert client.get(f"{site.url}/reports/runs/green/2020-01/v1-0123456789/{layout.REPORT}").status_code == 200
    key = (site.state / "secret-key").read_bytes()
    (folder / "notes.md").write_text("not a report")
    for path in ("runs/green/2020-01/v1-0123456789/booster.ubj", "%2E%2E/state/secret-key",
                 "runs/green/2020-01/%2E%2E/%2E%2E/%2E%2E/%2E%2E/state/secret-key"):
        answer = client.get(f"{site.url}/reports/{path}", allow_redirects=False)
        assert answer.status_code == 404 and key not in answer.content and b"not a report" not in answer.content, path
    for path in ("runs/green/2020-01/v1-0123456789/notes.md", "runs/green/2020-01/v1-0123456789/booster.ubj",
                 "%2E%2E/state/secret-key"):  # nor downloaded raw
        answer = client.get(f"{site.url}/raw/{path}", allow_redirects=False)
        assert answer.status_code == 404 and key not in answer.content and b"not a report" not in answer.content, path


def test_every_answer_forbids_framing_and_caching_and_the_cookie_is_for_http_only(site):
    login = requests.get(f"{site.url}/login", timeout=30)
    client = logged_in(site)
    for answer in (login, client.get(site.url), client.get(f"{site.url}/api/runs/20260101-000000-abcdef")):
        assert answer.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in \
            answer.headers["Content-Security-Policy"], answer.url
        assert answer.headers["Cache-Control"] == "no-store" and answer.headers["X-Content-Type-Options"] == "nosniff"
    [cookie] = client.cookies
    assert cookie.name == "taxi_session" and cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"
    assert 11.9 * 3600 < cookie.expires - dt.datetime.now().timestamp() <= 12 * 3600  # the session lasts 12 hours


def test_a_wrong_password_is_refused(site):
    client = requests.Session()
    answer = client.post(f"{site.url}/login", data={"csrf_token": csrf_token(client.get(f"{site.url}/login").text),
                                                    "password": site.password + "x"}, allow_redirects=False)
    assert answer.status_code == 401 and "Wrong password." in answer.text
    assert client.get(site.url, allow_redirects=False).status_code == 302
    assert site.password not in (site.workdir / "web.log").read_text()


def test_failed_logins_are_throttled_per_client_and_overall(tmp_path):
    """Through the app itself, clients told apart by their address: 3 failures lock a client out (even with the
    right password), the others may go on until 5 failures in all lock everyone out."""
    password = "the right password"
    app = create_app(Settings(store=str(tmp_path), tracking_uri="", scheduler_url="http://127.0.0.1:9",
                              state=tmp_path / "state", password_hash=generate_password_hash(password),
                              client_failures=3, total_failures=5))

    def attempt(address: str, secret: str) -> int:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        token = csrf_token(client.get("/login").text)
        return client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": secret}).status_code

    assert [attempt("10.0.0.1", "wrong") for _ in range(3)] == [401, 401, 401]
    assert attempt("10.0.0.1", password) == 429
    assert attempt("10.0.0.2", password) == 302  # another client is not locked out by the first
    assert [attempt("10.0.0.2", "wrong"), attempt("10.0.0.3", "wrong")] == [401, 401]
    assert attempt("10.0.0.4", password) == 429  # 5 failures in all: everyone waits


def test_forwarded_addresses_are_trusted_only_behind_the_tls_proxy(tmp_path):
    """A client that names itself in X-Forwarded-For is the address it connects from, unless the page runs behind
    the TLS proxy (--tls-proxy), which sets that header itself; then the session cookie is Secure too."""
    password = "the right password"

    def attempts(tls_proxy: bool) -> tuple[list[int], str]:
        app = create_app(Settings(store=str(tmp_path), tracking_uri="", scheduler_url="http://127.0.0.1:9",
                                  state=tmp_path / f"state-{tls_proxy}", password_hash=generate_password_hash(password),
                                  client_failures=2, tls_proxy=tls_proxy))
        codes, cookie = [], ""
        for n, secret in enumerate(("wrong", "wrong", password)):
            client = app.test_client()
            client.environ_base["REMOTE_ADDR"] = "10.0.0.1"
            headers = {"X-Forwarded-For": f"192.0.2.{n}", "X-Forwarded-Proto": "https",
                       "Referer": "https://localhost/login"}  # Flask-WTF checks it on HTTPS
            token = csrf_token(client.get("/login", headers=headers).text)
            answer = client.post("/login", data={"csrf_token": token, "name": OPERATOR, "password": secret},
                                 headers=headers)
            codes.append(answer.status_code)
            cookie = answer.headers.get("Set-Cookie", cookie)
        return codes, cookie

    direct, direct_cookie = attempts(tls_proxy=False)
    assert direct == [401, 401, 429]  # one client, however it names itself
    proxied, proxied_cookie = attempts(tls_proxy=True)
    assert proxied == [401, 401, 302]  # three clients, as the proxy says
    assert "; Secure" in proxied_cookie and "; Secure" not in direct_cookie


def test_the_throttle_forgets_failures_after_its_window():
    now = [0.0]
    throttle = Throttle(per_client=2, overall=10, window=60, clock=lambda: now[0])
    throttle.failed("a"), throttle.failed("a")
    assert throttle.wait("a") == 60 and throttle.wait("b") == 0
    now[0] = 59.5
    assert throttle.wait("a") == 0.5
    now[0] = 60
    assert throttle.wait("a") == 0


def test_shell_metacharacters_are_rejected_and_never_run(site, tmp_path):
    marker = tmp_path / "pwned"
    client = logged_in(site)
    answer = submit(client, site, color="green", first=f"2021; touch {marker}", max_evals=f"$(touch {marker})",
                    seed=f"`touch {marker}`")
    assert answer.status_code == 400
    assert f"&#39;2021; touch {marker}&#39; is not a month" in answer.text
    assert f"&#39;$(touch {marker})&#39; is not a whole number" in answer.text
    assert f"&#39;`touch {marker}`&#39; is not a whole number" in answer.text
    assert not marker.exists() and not [r for r in site.runs() if "touch" in r["command"]]


def test_each_bad_value_gets_its_own_error_and_nothing_starts(site):
    """Checked by the tasks' own rules: a month whose validation month is not over, a range that ends before it
    starts, a color there is no data of, and tuning values TuneHyperparams refuses."""
    client = logged_in(site)
    today = dt.date.today()
    before = site.runs()
    answer = submit(client, site, color="green", first=f"{today:%Y-%m}", last="2021-01", max_evals="0",
                    prune_tolerance="-1", search_space="nowhere")
    assert answer.status_code == 400
    next_month = dt.date(today.year + today.month // 12, today.month % 12 + 1, 1)
    for message in (f"validation month {next_month:%Y-%m} (the month after {today:%Y-%m}) is not over yet, so it has "
                    f"no data: train on an earlier month", "tuning setting max_evals must be at least 1, got 0",
                    "&#39;nowhere&#39; is not one of the choices: categorical, course, lossguide"):
        assert message in answer.text
    ranged = submit(client, site, color="yellow", first="2021-03", last="2021-01", prune_tolerance="-1")
    assert "the last month 2021-01 is before the first 2021-03" in ranged.text
    assert "tuning setting prune_tolerance must be 0 (off) or more, got -1.0" in ranged.text
    colored = submit(client, site, color="red", first="2021-01")
    assert "unknown color &#39;red&#39;: use one of green, yellow" in colored.text
    assert site.runs() == before


def test_a_run_s_arguments_reach_the_process_verbatim_never_through_a_shell(site, tmp_path):
    """Runs.start with a stand-in for `luigi` that records its arguments: each value arrives as one argument."""
    marker, received = tmp_path / "pwned", tmp_path / "argv.json"
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "luigi"
    stand_in.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"json.dump(sys.argv[1:], open({str(received)!r}, 'w'))\n")
    stand_in.chmod(0o755)
    runs = Runs(Settings(store=str(tmp_path), tracking_uri="", scheduler_url=site.luigid.url, state=tmp_path / "state",
                         password_hash="scrypt:unused", python=str(tmp_path / "bin" / "python")))
    argv = ["--month", f"2021; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", "a b", ""]
    record, started = runs.start({"argv": argv, "task_id": "Stand_in_0123456789", "title": "t", "overrides": {}})
    wait_until(lambda: runs.get(record["id"])["exit_code"] is not None, "the stand-in", 30)
    assert started and json.loads(received.read_text()) == argv and not marker.exists()
    assert runs.get(record["id"])["exit_code"] == 0


def test_two_submissions_of_one_month_at_once_make_one_run(site):
    clients = [logged_in(site), logged_in(site)]
    tokens = [csrf_token(client.get(f"{site.url}/runs/new").text) for client in clients]
    form = {"color": "green", "first": "2023-01", "last": ""}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda ct: ct[0].post(f"{site.url}/runs", data={**form, "csrf_token": ct[1]},
                                                      allow_redirects=False), zip(clients, tokens)))
    locations = sorted(answer.headers["Location"] for answer in answers)
    assert [answer.status_code for answer in answers] == [302, 302]
    assert locations[0] + "?already=1" == locations[1]  # the second was shown the first's run
    run = finished(site, locations[0].rsplit("/", 1)[1])
    assert run["exit_code"] == 0
    assert [r["id"] for r in site.runs() if r["title"] == "green 2023-01"] == [run["id"]]
    client = MlflowClient(site.mlflow.url)
    experiment = client.get_experiment_by_name("taxi-duration").experiment_id
    assert len(client.search_runs([experiment], "attributes.run_name = 'training green 2023-01'")) == 1
    trained = [task for task, _ in history_events(site, "TrainModel", "RUNNING")]
    assert len(trained) == len(set(trained))  # no TrainModel ran twice


def test_a_range_runs_range_monthly_as_scripts_backfill_does(site):
    """2021-03 to 2021-06, which the sampled mirror lacks: each month is reported missing (exit 20)."""
    client = logged_in(site)
    answer = submit(client, site, color="green", first="2021-03", last="2021-06")
    assert answer.status_code == 302, answer.text
    run = finished(site, answer.headers["Location"].rsplit("/", 1)[1])
    assert run["title"] == "green 2021-03 to 2021-06"
    assert run["argv"][2:14] == ["RangeMonthly", "--of", "RegisterMonth", "--of-params", '{"color": "green"}',
                                 "--param-name", "month", "--start", "2021-03", "--stop", "2021-07", "--months-back"]
    assert run["exit_code"] == 20 and run["outcome"] == "missing data"
    tasks = client.get(f"{site.url}/api/runs/{run['id']}").json()["tasks"]
    assert run["task_id"].startswith("RangeMonthly_") and tasks[-1]["task_id"] == run["task_id"]
    assert sorted(task["params"]["month"] for task in tasks if task["name"] == "RegisterMonth") == [
        "2021-03", "2021-04", "2021-05", "2021-06"]


# ---------------------------------------------------------------------------------------------------------------
# Task logs, in this process: what a worker writes, and a store that cannot take it


class Noted(luigi.Task):
    """Logs a line and names its MLflow page, then fails if asked."""

    name = luigi.Parameter()
    fail = luigi.BoolParameter(default=False)

    def complete(self) -> bool:
        return False

    def run(self):
        logging.getLogger("taxi.test").warning("working on %s", self.name)
        self.set_tracking_url(f"http://mlflow.invalid/#/runs/{self.name}")
        if self.fail:
            raise ValueError("broken on purpose\nsecond line")


@pytest.fixture
def task_logs(luigi_config):
    """Luigi's [worker] task_process_context set to TaskLog for this test's in-process runs."""
    config = luigi.configuration.get_config()
    config.set("worker", "task_process_context", "taxi.pipeline.tasklog.TaskLog")
    yield Path(luigi_config["taxi"]["store"])
    config.remove_option("worker", "task_process_context")


def test_each_attempt_s_log_and_record_are_in_the_store(task_logs):
    ok, bad = Noted(name="ok"), Noted(name="bad", fail=True)
    assert not luigi.build([ok, bad], local_scheduler=True, workers=1)
    logs = {task.name: one_file(task_logs, layout.TASK_LOG, family="Noted", task_id=task.task_id).read_text()
            for task in (ok, bad)}
    records = {task.name: json.loads(one_file(task_logs, layout.TASK_LOG_RECORD, family="Noted",
                                              task_id=task.task_id).read_text()) for task in (ok, bad)}
    assert "WARNING taxi.test: working on ok" in logs["ok"] and "done      Noted(name=ok, fail=False)" in logs["ok"]
    assert records["ok"]["outcome"] == "done" and records["ok"]["links"] == ["http://mlflow.invalid/#/runs/ok"]
    assert "ValueError: broken on purpose\nsecond line" in logs["bad"]  # the traceback, as luigi logs it
    assert records["bad"]["outcome"] == "failed" and records["bad"]["error"] == "ValueError: broken on purpose"
    assert records["bad"]["attempt"].endswith(f"-{os.getpid()}") and records["bad"]["finished"]
    assert "working on ok" not in logs["bad"]  # each attempt has its own lines only


def test_a_store_that_cannot_take_the_log_costs_a_warning_not_the_task(task_logs, caplog):
    blocked = task_logs.parent / "blocked"
    blocked.write_text("a file where the store's folder should be")
    luigi.configuration.get_config().set("taxi", "store", str(blocked))
    assert luigi.build([Noted(name="blocked")], local_scheduler=True, workers=1)
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "taxi.pipeline.tasklog"] == [
        f"cannot write the log of {Noted(name='blocked').task_id} to the store"]


# ---------------------------------------------------------------------------------------------------------------
# The web process and the pipeline

IMPORT_PROBE = """
import json, re, sys
from pathlib import Path
from taxi.web.app import create_app
from taxi.web.settings import from_config
app = create_app(from_config(Path(sys.argv[1])))
client = app.test_client()
token = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
client.post("/login", data={"csrf_token": token(client.get("/login").text), "name": "probe", "password": sys.argv[2]})
served = {}
for path in json.loads(sys.argv[3]):
    served[path] = client.get(path).status_code
form = client.get("/runs/new").text
bad_month = {"csrf_token": token(form), "color": "green", "first": "2021-13"}
served["POST /runs"] = client.post("/runs", data=bad_month).status_code
print(json.dumps({"served": served, "imported": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("xgboost", "hyperopt") or m.startswith("taxi.pipeline"))}))
"""


def test_the_web_process_never_imports_the_pipeline(browser_run, site):
    """Every page served once in a fresh process (a run, a task log, a report and its plot among them): none of
    xgboost, hyperopt or taxi.pipeline is in sys.modules."""
    train_id = next(t for t in luigid_tasks(site, "DONE") if t.startswith("TrainModel_"))
    report = one_file(site.store, layout.RUN, color="green", ym="2021-01", name=layout.REPORT)
    folder = report.parent.relative_to(site.store).as_posix()
    paths = ["/", "/champions", "/runs/new", f"/runs/{browser_run.run['id']}", f"/api/runs/{browser_run.run['id']}",
             f"/tasks/{train_id}", f"/api/tasks/{train_id}", f"/reports/{folder}/report.md",
             f"/reports/{folder}/{layout.REPORT_PLOTS[0]}"]
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(site.state), site.password, json.dumps(paths)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT,
                           env={**os.environ, "LUIGI_CONFIG_PATH": str(site.profile),
                                HASH_ENV: generate_password_hash(site.password)})
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["served"] == {**{path: 200 for path in paths}, "POST /runs": 400}
    assert found["imported"] == []
