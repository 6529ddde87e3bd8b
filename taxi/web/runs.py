"""Runs started from the page: the form checked by `python -m taxi.web.plan`, then the `luigi` command it planned
started as a process (an argument list, never a shell) against the profile's luigid, and a record per run in the
state folder: what was started, its output, its exit status and the last state luigid had of its tasks."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import luigi.retcodes
import requests

from taxi.web import observe
from taxi.web.settings import Settings

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
RUNNING = "running"
PLAN_TIMEOUT = 120  # seconds for `python -m taxi.web.plan` (it imports the pipeline: about a second)
POLL_SECONDS = 2.0  # how often a run this process did not start (the page restarted) is checked for its end


class PlanFailed(RuntimeError):
    """`python -m taxi.web.plan` itself failed (not the form): the message has the end of its output."""


def exit_meanings() -> dict[int, str]:
    """What each exit status of a `luigi` run means, by luigi.cfg's [retcode] (0: every task done)."""
    codes = luigi.retcodes.retcode()
    return {0: "done", **{getattr(codes, name): name.replace("_", " ") for name in (
        "already_running", "missing_data", "not_run", "task_failed", "scheduling_error", "unhandled_exception")}}


class Runs:
    """The runs of this page, one JSON record and one output file each under `{state}/runs/`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.folder = settings.state / "runs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meanings = exit_meanings()
        self._form: dict | None = None
        for record in self.recent(limit=None):
            if record["outcome"] == RUNNING:
                threading.Thread(target=self._watch, args=(record,), daemon=True).start()

    def _plan(self, command: str, form: dict | None = None) -> dict:
        done = subprocess.run([self.settings.python, "-m", "taxi.web.plan", command], input=json.dumps(form or {}),
                              capture_output=True, text=True, cwd=self.settings.checkout, env=self.settings.run_env,
                              timeout=PLAN_TIMEOUT)
        if done.returncode != 0:
            raise PlanFailed(f"python -m taxi.web.plan {command} failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout)

    def form(self) -> dict:
        """The form's fields: colors and TuneHyperparams' parameters with their configured values."""
        if self._form is None:
            self._form = self._plan("describe")
        return self._form

    def check(self, form: dict) -> dict:
        """{"errors": ...} or the planned run (see taxi.web.plan)."""
        return self._plan("check", form)

    def start(self, planned: dict) -> tuple[dict, bool]:
        """Start the planned run, or find the run of this page still running the same root task: (record, started).
        luigid keeps any other process (the CLI, a timer, another host) from running the same task twice."""
        with self._lock():
            running = next((r for r in self.recent(limit=None)
                            if r["outcome"] == RUNNING and r["task_id"] == planned["task_id"]), None)
            if running is not None:
                return running, False
            now = dt.datetime.now(dt.timezone.utc)
            run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            record = {"id": run_id, "title": planned["title"], "task_id": planned["task_id"],
                      "argv": planned["argv"], "overrides": planned["overrides"],
                      "command": shlex.join(["luigi", *planned["argv"]]),
                      "started": now.isoformat(timespec="seconds"), "finished": None, "pid": None,
                      "exit_code": None, "outcome": RUNNING, "tasks": None}
            with open(self.folder / f"{run_id}.log", "wb") as output:
                process = subprocess.Popen([self.settings.luigi, *planned["argv"]], cwd=self.settings.checkout,
                                           env=self.settings.run_env, stdin=subprocess.DEVNULL, stdout=output,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            record["pid"] = process.pid
            self._save(record)
        log.info("run %s started (pid %d): %s", run_id, process.pid, record["command"])
        threading.Thread(target=self._wait, args=(record, process), daemon=True).start()
        return record, True

    def get(self, run_id: str) -> dict | None:
        path = self.folder / f"{run_id}.json"
        return json.loads(path.read_text()) if RUN_ID.fullmatch(run_id) and path.is_file() else None

    def output(self, run_id: str) -> str:
        """What the `luigi` process printed (its execution summary at the end)."""
        path = self.folder / f"{run_id}.log"
        return path.read_text(errors="replace") if RUN_ID.fullmatch(run_id) and path.is_file() else ""

    def recent(self, limit: int | None = 20) -> list[dict]:
        """The page's runs, newest first."""
        paths = sorted(self.folder.glob("*.json"), reverse=True)
        return [json.loads(path.read_text()) for path in paths[:limit]]

    def _wait(self, record: dict, process: subprocess.Popen) -> None:
        self._finish(record, process.wait())

    def _watch(self, record: dict) -> None:
        """A run started before this process (the page restarted): its exit status cannot be known, only its end."""
        while _alive(record["pid"]):
            time.sleep(POLL_SECONDS)
        self._finish(record, None)

    def _finish(self, record: dict, code: int | None) -> None:
        """Record the exit status and what luigid has of the run's tasks now, before it forgets them."""
        try:
            tasks = observe.graph(self.settings.scheduler_url, record["task_id"])
        except requests.RequestException:
            tasks = None
        if code is None:
            outcome = "ended; its exit status is unknown (the page restarted while it ran)"
        elif code < 0:
            outcome = f"killed by signal {-code}"
        else:
            outcome = self.meanings.get(code, "failed")
        record.update(finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), exit_code=code,
                      outcome=outcome, tasks=tasks or record["tasks"])
        self._save(record)
        log.info("run %s ended: %s (exit status %s)", record["id"], outcome, code)

    def _save(self, record: dict) -> None:
        """The record, replaced whole."""
        path = self.folder / f"{record['id']}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One start at a time, across this page's threads and processes."""
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
