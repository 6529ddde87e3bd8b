"""The webhook against a loopback receiver (http.server on 127.0.0.1 recording the JSON bodies), with real
`luigi --module taxi.tasks` runs: a failed task and a registered model (with its decision) post one message
each; a webhook that answers 500, refuses the connection or hangs costs one warning line and never the run; unset,
nothing is posted; the URL (a fake Slack token in its path) is in no output."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from taxi import layout, notify
from taxi.registry import model_name
from tests.support.luigi_process import private_lock
from tests.support.runs import SMALL_TUNING, run_luigi, write_config
from tests.support.services import free_port
from tests.support.store import run_file

MODEL = model_name("green")
TOKEN = f"T0FAKE/B0FAKE/{secrets.token_hex(12)}"  # a Slack webhook URL's path is its secret
REGISTER_OUTPUTS = (layout.REGISTRATION, *layout.REPORT_FILES)


class Receiver:
    """A loopback webhook: records the JSON body of every POST and answers `status`; `hang` holds every answer
    until the receiver closes."""

    def __init__(self, status: int = 200, hang: bool = False):
        self.status, self.hang, self.bodies = status, hang, []
        self.closing = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if receiver.hang:
                    receiver.closing.wait()
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN}"

    @property
    def texts(self) -> list[str]:
        return [body["text"] for body in self.bodies]

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    served = Receiver()
    yield served
    served.close()


@dataclasses.dataclass
class Pipeline:
    workdir: Path
    config: Path
    source: Path

    def run(self, *args: str, url: str | None) -> tuple[int, str]:
        """`luigi --module taxi.tasks ARGS` with TAXI_WEBHOOK_URL = `url` (None: unset); (exit code, its output),
        checked to hold no part of the URL's token."""
        env = {notify.ENV: url} if url is not None else {}
        done = run_luigi(self.workdir, self.config, *args, env=env)
        output = done.stdout + done.stderr
        assert TOKEN.rsplit("/", 1)[-1] not in output
        return done.returncode, output

    def run_folder(self) -> Path:
        return run_file(self.workdir / "store", "train.json").parent


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, sampled_tlc) -> Pipeline:
    """A store where green 2021-01 is trained (not registered), a local sqlite registry, no webhook."""
    workdir = tmp_path_factory.mktemp("notify")
    config = write_config(workdir / "notify.cfg", {
        "taxi": {"source": str(sampled_tlc), "store": str(workdir / "store"), "threads": "1"},
        "mlflow": {"tracking_uri": f"sqlite:///{workdir}/mlflow.db", "artifact_location": str(workdir / "mlartifacts")},
        "TuneHyperparams": SMALL_TUNING, "core": private_lock(workdir)})
    pipeline = Pipeline(workdir, config, sampled_tlc)
    code, output = pipeline.run("TrainModel", "--year", "2021", "--month", "1", url="")
    assert code == 0, output[-3000:]
    return pipeline


@pytest.fixture(scope="module")
def first_registration(pipeline) -> tuple[int, str, list[str]]:
    """RegisterModel on an empty registry, posting to a receiver: (exit code, output, texts received)."""
    served = Receiver()
    try:
        code, output = pipeline.run("RegisterModel", "--year", "2021", "--month", "1", url=served.url)
    finally:
        served.close()
    return code, output, served.texts


def register_again(pipeline: Pipeline, url: str | None) -> tuple[int, str]:
    """RegisterModel once more with its outputs removed, as after a crash: the version is found registered and its
    recorded decision, champion, is made again (only RegisterModel runs)."""
    for name in REGISTER_OUTPUTS:
        (pipeline.run_folder() / name).unlink()
    return pipeline.run("RegisterModel", "--year", "2021", "--month", "1", url=url)


def webhook_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "webhook" in line]


def test_a_failed_task_posts_one_message_naming_the_task_and_the_cause(pipeline, receiver):
    code, output = pipeline.run("DownloadMonth", "--year", "2020", "--month", "5", url=receiver.url)
    assert code == 30, output[-3000:]
    assert receiver.texts == [
        f"taxi: DownloadMonth(color=green, year=2020, month=5) FAILED on {socket.gethostname()}: MonthNotPublished: "
        f"green 2020-05: {pipeline.source}/green_tripdata_2020-05.parquet does not exist: the month is not in the "
        f"mirror; check [taxi] source"]
    assert webhook_lines(output) == []


def test_a_first_registration_posts_the_champion_message(pipeline, first_registration):
    code, output, texts = first_registration
    assert code == 0, output[-3000:]
    registration = json.loads((pipeline.run_folder() / "registration.json").read_text())
    assert registration["decision"] == "champion" and registration["previous_champion_version"] is None
    assert texts == [
        f"taxi: {MODEL} v{registration['version']}, trained on 2021-01, gate RMSE {registration['gate_rmse']:.4f} "
        f"min: {registration['reason']}; report {pipeline.run_folder() / 'report.md'}"]
    assert registration["reason"].startswith("champion: the first model, RMSE ")
    assert (pipeline.run_folder() / "report.md").is_file()
    assert webhook_lines(output) == []


@pytest.mark.parametrize("status", [500, None], ids=["answers-500", "refuses-the-connection"])
def test_a_failing_webhook_costs_one_warning_and_never_the_run(pipeline, first_registration, status):
    served = Receiver(status) if status else None
    url = served.url if served else f"http://127.0.0.1:{free_port()}/services/{TOKEN}"
    try:
        code, output = register_again(pipeline, url)
    finally:
        if served:
            served.close()
    assert code == 0, output[-3000:]
    assert (pipeline.run_folder() / "registration.json").is_file()
    where = url.split("/services/")[0]
    reason = "HTTP 500" if served else "ConnectionRefusedError: Connection refused"
    assert webhook_lines(output) == [
        f"WARNING: taxi.notify: webhook {where} did not take the message ({reason}); the run goes on"]
    if served:
        assert served.texts[0].startswith(f"taxi: {MODEL} v1, trained on 2021-01, gate RMSE ")


def test_without_the_variable_nothing_is_posted(pipeline, first_registration, monkeypatch):
    """No webhook URL: a failure and a registration go on without a word about a webhook (no attempt, no warning)."""
    monkeypatch.delenv(notify.ENV, raising=False)
    failed, failed_output = pipeline.run("DownloadMonth", "--year", "2020", "--month", "5", url=None)
    registered, registered_output = register_again(pipeline, None)
    assert (failed, registered) == (30, 0), (failed_output + registered_output)[-3000:]
    assert webhook_lines(failed_output + registered_output) == []


def test_the_token_is_in_no_file_the_runs_wrote(pipeline, first_registration):
    secret = TOKEN.rsplit("/", 1)[-1].encode()
    assert [path for path in pipeline.workdir.rglob("*") if path.is_file() and secret in path.read_bytes()] == []


def test_a_webhook_that_hangs_is_given_up_after_the_timeout(monkeypatch, caplog):
    hanging = Receiver(hang=True)
    monkeypatch.setenv(notify.ENV, hanging.url)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="taxi.notify"):
            assert notify.post("hello") is False
    finally:
        hanging.close()
    assert notify.TIMEOUT <= time.monotonic() - started < notify.TIMEOUT + 2
    assert hanging.texts == ["hello"]
    assert [r.getMessage() for r in caplog.records] == [
        f"webhook {hanging.url.rsplit('/services', 1)[0]} did not take the message (TimeoutError); the run goes on"]
