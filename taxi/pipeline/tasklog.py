"""One log file per task attempt in the store, and each task's link in luigid: `TaskLog` is Luigi's
`[worker] task_process_context` (the central, server and cluster profiles set it), so it wraps every task a worker
runs. The operator page (taxi.web, docs/web.md) reads what it writes."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import threading

import luigi

from taxi import layout, storage
from taxi.config import TaxiConfig
from taxi.urls import redact

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # a running task's log in the store is at most this old
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUNNING, DONE, FAILED, PENDING = "running", "done", "failed", "pending"  # an attempt's outcome

_open: dict[str, "TaskLog"] = {}  # task id -> the attempt running in this process


class WebConfig(luigi.Config):
    """The `[web]` section a worker reads: where the operator page is, for each task's link in luigid."""

    url = luigi.Parameter(default="", description="the operator page's address as a browser reaches it, e.g. "
                                                  "http://127.0.0.1:8083; empty: tasks link to their MLflow page")

    @classmethod
    def get_task_family(cls) -> str:
        return "web"


def task_page(base: str, task_id: str) -> str:
    """A task's page on the operator site at `base`."""
    return f"{base.rstrip('/')}/tasks/{task_id}"


class _Lines(logging.Handler):
    """Every log record of this process while the task runs, formatted, in memory."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(LINE_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        with self.lock:
            return "".join(line + "\n" for line in self.lines)


class TaskLog:
    """An attempt of one task: its log lines and record written to the store at the start, every FLUSH_SECONDS and
    at the end, each time whole (atomically); its MLflow pages recorded; luigid's link to it set. Writing to the
    store never fails the task: a failed write is one warning."""

    def __init__(self, process):  # a luigi.worker.TaskProcess
        self.process, self.task = process, process.task
        self.stop, self.writing = threading.Event(), threading.Lock()
        self.warned = False

    def __enter__(self) -> "TaskLog":
        try:
            self._open()
        except Exception as exc:  # a bad [taxi] store or an unreachable luigid: the task runs, without its log
            self.targets = None
            log.warning("no log of %s in the store (%s: %s)", self.task.task_id, type(exc).__name__, exc)
        return self

    def _open(self) -> None:
        started = dt.datetime.now(dt.timezone.utc)
        host = socket.gethostname()
        attempt = f"{started:%Y%m%dT%H%M%S}Z-{re.sub(r'[^A-Za-z0-9.-]', '-', host)}-{os.getpid()}"
        store = TaxiConfig().store
        self.targets = {name: storage.target(store, path)
                        for name, path in layout.task_log(self.task.task_family, self.task.task_id, attempt).items()}
        self.record = {"task_id": self.task.task_id, "attempt": attempt, "host": host, "pid": os.getpid(),
                       "started": started.isoformat(timespec="seconds"), "finished": None, "outcome": RUNNING,
                       "error": None, "links": []}
        reporter = self.process.status_reporter
        self.to_luigid = reporter.update_tracking_url
        page = WebConfig().url
        if page:
            self.to_luigid(task_page(page, self.task.task_id))
        # nothing is hooked in before this point, so a failure above leaves the process as it was
        self.lines = _Lines()
        logging.getLogger().addHandler(self.lines)
        reporter.update_tracking_url = self.link  # what Luigi hands the task as set_tracking_url
        _open[self.task.task_id] = self
        self.write()
        self.flusher = threading.Thread(target=self._flush, name="taxi-tasklog", daemon=True)
        self.flusher.start()

    def link(self, url: str) -> None:
        """The task's MLflow page: recorded; luigid links to it unless it links to the operator page."""
        self.record["links"].append(redact(url))
        self.write()
        if not WebConfig().url:
            self.to_luigid(url)

    def finish(self, outcome: str, error: str | None = None) -> None:
        self.record.update(outcome=outcome, error=error)

    def _flush(self) -> None:
        written = 0
        while not self.stop.wait(FLUSH_SECONDS):
            if len(self.lines.lines) != written:
                written = len(self.lines.lines)
                self.write()

    def __exit__(self, *exc) -> None:
        if self.targets is None:
            return
        self.stop.set()
        self.flusher.join()
        logging.getLogger().removeHandler(self.lines)
        _open.pop(self.task.task_id, None)
        if self.record["outcome"] == RUNNING:  # neither done nor failed: it yielded new dependencies
            self.finish(PENDING)
        self.record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.write()

    def write(self) -> None:
        """The log and then the record, each whole; a failure is one warning (to stderr: the handler may be gone)."""
        try:
            with self.writing:
                storage.write_bytes(self.lines.text().encode(), self.targets["log"])
                storage.write_bytes(json.dumps(self.record, indent=2).encode(), self.targets["record"])
        except Exception as exc:  # a full or unreachable store: the task's own work and outcome come first
            if not self.warned:
                self.warned = True
                log.warning("cannot write the log of %s to the store (%s: %s); the task goes on", self.task.task_id,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _succeeded(task: luigi.Task) -> None:
    if task.task_id in _open:
        _open[task.task_id].finish(DONE)


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _failed(task: luigi.Task, exception: BaseException) -> None:
    if task.task_id in _open:
        lines = str(exception).strip().splitlines()
        _open[task.task_id].finish(FAILED, f"{type(exception).__name__}: {lines[0]}" if lines else
                                   type(exception).__name__)
