"""The operator page's routes. Every route but the login page requires a session (one check, before any other);
every form carries a CSRF token (Flask-WTF's CSRFProtect); failed logins are throttled. The login's name is who the
alias history records for a rollback made here."""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import re
import subprocess

import luigi
import requests
from flask import Flask, Response, abort, flash, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFProtect
from markupsafe import Markup
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from werkzeug.middleware.proxy_fix import ProxyFix

from taxi import config, data, layout, registry, rollback, status, storage, store_registry, tracking
from taxi.web import observe, report_page
from taxi.web.auth import Throttle, password_matches
from taxi.web.runs import RUNNING, PlanFailed, Runs
from taxi.web.settings import Settings, secret_key

log = logging.getLogger(__name__)

PUBLIC = {"login"}  # the only endpoint answered without a session
SESSION_HOURS = 12
# the pages' own inline style and scripts only; links to MLflow and luigid are navigations, which this does not limit
CONTENT_POLICY = ("default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                  "frame-ancestors 'none'")
# a report is the store's text: its page runs no script at all, and shows images of this site only
REPORT_POLICY = "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; frame-ancestors 'none'"
REPORT_PATH = re.compile(layout.RUN.format(color=f"(?:{'|'.join(data.COLORS)})", ym=r"\d{4}-\d{2}", key=r"\w[\w.-]*",
                                           name=f"(?:{'|'.join(map(re.escape, layout.REPORT_FILES))})"))
ROLLBACK_TIMEOUT = 300  # seconds for scripts/champion's rollback, waiting for the decision lock included
OPERATOR_NAME = re.compile(r"[\w .@'-]{1,64}")  # the login's name, as the alias history records it
READ_ERRORS = (MlflowException, tracking.TrackingUnavailable, storage.StoreUnreachable, storage.StoreRefused,
               storage.CorruptTarget, requests.RequestException, store_registry.OtherRegistry)


def is_local_path(target: str) -> bool:
    """Whether a login's `next` is a path of this site: one leading slash and no backslash, space or control
    character (browsers read a backslash as a slash and drop tabs and newlines, so `/\\t/host` is `//host`)."""
    return (target.startswith("/") and not target.startswith("//") and "\\" not in target
            and all(" " < char != "\x7f" for char in target))


def create_app(settings: Settings, runs: Runs | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update(SECRET_KEY=secret_key(settings.state), SESSION_COOKIE_NAME="taxi_session",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.tls_proxy,
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=SESSION_HOURS), MAX_CONTENT_LENGTH=64 * 1024,
                      WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600)
    if settings.tls_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
    runs = runs or Runs(settings)
    throttle = Throttle(settings.client_failures, settings.total_failures, settings.failure_window)

    @app.before_request
    def require_session():
        """Registered before CSRFProtect, so it answers first: no page, API answer or form without a session."""
        if request.endpoint in PUBLIC or isinstance(session.get("operator"), str):  # the login's name
            return None
        if request.path.startswith("/api/"):
            return jsonify(error="log in first"), 401
        return redirect(url_for("login", next=request.full_path if request.method == "GET" else None))

    CSRFProtect(app)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update({"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})
        response.headers.setdefault("Content-Security-Policy", CONTENT_POLICY)  # unless the page set its own
        return response

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return render_template("login.html", error=None)
        client = request.remote_addr or "unknown"
        wait = throttle.wait(client)
        if wait > 0:
            log.warning("login from %s refused: too many failed attempts", client)
            return render_template("login.html", error=f"Too many failed logins: try again in {wait / 60:.0f} "
                                                       f"minutes."), 429, {"Retry-After": str(int(wait) + 1)}
        if not password_matches(settings.password_hash, request.form.get("password", "")):
            throttle.failed(client)
            log.warning("failed login from %s", client)
            return render_template("login.html", error="Wrong password."), 401
        name = " ".join(request.form.get("name", "").split())
        if not OPERATOR_NAME.fullmatch(name):
            return render_template("login.html", error="Give your name (letters, digits, spaces, . @ ' -; at most 64): "
                                                       "it is recorded with the champion moves you make."), 400
        session.clear()
        session.permanent = True
        session["operator"] = name
        log.info("login of %s from %s", name, client)
        target = request.args.get("next", "")
        return redirect(target if is_local_path(target) else url_for("months"))

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def months():
        sections, error = [], None
        try:
            store_registry.check(settings.store, config.MlflowConfig().experiment, settings.tracking_uri)
            for color in data.COLORS:
                sections.append({"color": color, "model": registry.model_name(color),
                                 "rows": [month_row(color, row) for row in status.rows(settings.store, color)]})
        except READ_ERRORS as exc:
            error = f"{type(exc).__name__}: {status.first_line(str(exc))}"
        try:
            scheduled = status.scheduler_tasks(settings.scheduler_url)
        except requests.RequestException as exc:
            scheduled = None
            error = error or f"luigid {settings.scheduler_url} is not reachable ({type(exc).__name__})"
        return render_template("months.html", sections=sections, columns=status.COLUMNS, error=error,
                               scheduled=scheduled, runs=runs.recent(), settings=settings)

    def month_row(color: str, row: status.Row) -> dict:
        """The row's cells and its links: report, MLflow version and run pages, luigid's history of its task."""
        in_registry = row.alias != status.MISSING
        return {"cells": status.cells(row),
                "report": url_for("report", path=posixpath.join(row.folder, layout.REPORT)),
                "version_url": tracking.version_url(registry.model_name(color), row.version) if in_registry else None,
                "run_url": tracking.run_url(row.run_id) if in_registry else None,
                "task_url": f"{settings.visualiser}/history/by_task_id/{row.task_id}"}

    @app.get("/champions")
    def champions():
        return render_template("champions.html", colors=[champion_view(color) for color in data.COLORS],
                               max_reason=rollback.MAX_REASON)

    def champion_view(color: str) -> dict:
        """A color's versions with their decisions, the version a rollback goes back to by default, its alias
        history; or the error that kept them from being read."""
        view = {"color": color, "model": registry.model_name(color), "versions": [], "previous": None,
                "champion": None, "history": [], "refused": None, "error": None}
        try:
            store_registry.check(settings.store, config.MlflowConfig().experiment, settings.tracking_uri)
            found, model = rollback.versions(MlflowClient(), view["model"])
            view["champion"] = rollback.champion_of(model)
            view["versions"] = [found[number] for number in sorted(found, reverse=True)]
            view["history"] = list(reversed(status.alias_moves(color)))
            view["previous"] = rollback.target(view["model"], None, view["champion"], found)
        except rollback.RollbackRefused as exc:
            view["refused"] = str(exc)
        except READ_ERRORS as exc:
            view["error"] = f"{type(exc).__name__}: {status.first_line(str(exc))}"
        return view

    @app.post("/champions/<color>/rollback")
    def roll_back(color: str):
        """scripts/champion's rollback, with the login's name as who: it takes the decision lock as the CLI does."""
        if color not in data.COLORS:
            abort(404)
        command = [settings.python, "-m", "taxi.rollback", "rollback", color, f"--to={request.form.get('to', '')}",
                   f"--reason={request.form.get('reason', '')}", f"--who={session['operator']}",
                   "--via=operator page"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=settings.checkout,
                                  env=settings.run_env, timeout=ROLLBACK_TIMEOUT)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(command, 1, "", f"ERROR: no answer within {ROLLBACK_TIMEOUT} s")
        if done.returncode == 0:
            flash(done.stdout.strip())
            return redirect(url_for("champions"))
        errors = [line.split(": ", 2)[-1] for line in done.stderr.splitlines() if line.startswith("ERROR: ")]
        error = errors[-1] if errors else status.first_line(done.stderr[-2000:]) or f"exit {done.returncode}"
        log.warning("rollback of %s by %s refused: %s", color, session["operator"], error)
        return render_template("champions.html", colors=[champion_view(c) for c in data.COLORS],
                               max_reason=rollback.MAX_REASON,
                               error=f"The champion of {registry.model_name(color)} did not move: {error}",
                               values=request.form), 400 if done.returncode == 2 else 502

    def report_file(path: str) -> luigi.Target:
        """The store's file at `path` if it is a report or a plot of a run folder (REPORT_PATH) and exists; else 404."""
        if not REPORT_PATH.fullmatch(path):
            abort(404)
        target = storage.target(settings.store, path)
        if not target.exists():
            abort(404)
        return target

    @app.get("/reports/<path:path>")
    def report(path: str):
        """A report of the store as a page (its markdown rendered and sanitized, its plots inline), or one of its
        plots."""
        target = report_file(path)
        if not path.endswith(".md"):
            return Response(storage.read(target, bytes), mimetype="image/png")
        folder = posixpath.dirname(path)
        plots = {name: url_for("report", path=posixpath.join(folder, name))
                 for name in layout.REPORT_FILES if name != layout.REPORT}
        page = report_page.render(storage.read(target, bytes.decode), plots)
        return render_template("report.html", path=path, page=Markup(page)), {"Content-Security-Policy": REPORT_POLICY}

    @app.get("/raw/<path:path>")
    def report_raw(path: str):
        """A report's markdown as stored, to download."""
        if not path.endswith(".md"):
            abort(404)
        target = report_file(path)
        name = "-".join(path.split("/")[1:])  # e.g. green-2021-01-v1-0123456789-report.md
        return Response(storage.read(target, bytes), mimetype="text/markdown",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/runs/new")
    def new_run():
        return render_template("run_form.html", form=runs.form(), values={"tuning": {}}, errors={})

    @app.post("/runs")
    def start_run():
        fields = runs.form()
        values = {"color": request.form.get("color", ""), "first": request.form.get("first", ""),
                  "last": request.form.get("last", ""),
                  "tuning": {f["name"]: request.form.get(f["name"], f["default"]) for f in fields["tuning"]}}
        try:
            planned = runs.check(values)
        except PlanFailed as exc:
            planned = {"errors": {"general": str(exc)}}
        if "errors" in planned:
            return render_template("run_form.html", form=fields, values=values, errors=planned["errors"]), 400
        record, started = runs.start(planned)
        return redirect(url_for("run", run_id=record["id"], already=None if started else 1))

    @app.get("/runs/<run_id>")
    def run(run_id: str):
        record = runs.get(run_id) or abort(404)
        return render_template("run.html", run=record, already=bool(request.args.get("already")))

    @app.get("/api/runs/<run_id>")
    def api_run(run_id: str):
        record = runs.get(run_id) or abort(404)
        tasks, error = record["tasks"], None
        if record["outcome"] == RUNNING or tasks is None:
            try:
                tasks = observe.graph(settings.scheduler_url, record["task_id"]) or tasks
            except requests.RequestException as exc:
                error = f"luigid {settings.scheduler_url} is not reachable ({type(exc).__name__})"
        return jsonify(run=record, error=error, output=runs.output(run_id)[-4000:], tasks=[
            {**task, "title": observe.title(task), "page": url_for("task", task_id=task["task_id"])}
            for task in tasks or []])

    @app.get("/tasks/<task_id>")
    def task(task_id: str):
        if not observe.valid_task_id(task_id):
            abort(404)
        view = task_view(task_id, request.args.get("attempt"))
        title = observe.title(view["scheduler"]) if view["scheduler"] else task_id
        return render_template("task.html", task_id=task_id, title=title, **view)

    @app.get("/api/tasks/<task_id>")
    def api_task(task_id: str):
        if not observe.valid_task_id(task_id):
            abort(404)
        return jsonify(task_view(task_id, request.args.get("attempt")))

    def task_view(task_id: str, attempt: str | None) -> dict:
        """luigid's state of the task, its attempts in the store and one attempt's log (the newest by default)."""
        view = {"scheduler": None, "attempts": [], "attempt": None, "log": "", "error": None}
        try:
            view["scheduler"] = next((t for t in observe.graph(settings.scheduler_url, task_id)
                                      if t["task_id"] == task_id), None)
        except requests.RequestException as exc:
            view["error"] = f"luigid {settings.scheduler_url} is not reachable ({type(exc).__name__})"
        try:
            view["attempts"] = observe.attempts(settings.store, task_id)
            chosen = next((a for a in view["attempts"] if a["attempt"] == attempt), None) if attempt else None
            view["attempt"] = chosen or (view["attempts"][0] if view["attempts"] else None)
            if view["attempt"]:
                view["log"] = observe.log_text(settings.store, task_id, view["attempt"]["attempt"])
        except READ_ERRORS as exc:
            view["error"] = f"{type(exc).__name__}: {status.first_line(str(exc))}"
        return view

    return app
