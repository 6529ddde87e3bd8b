"""`python -m taxi.status [COLOR]`, what scripts/status runs: the trained months of each color, from the store's
registration records and the registry's current aliases, and its scored months with their live error, then what
luigid has running, failed or disabled.

Errors (tracking server down, store unreachable, a store serving another registry) are one line on stderr and
exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import posixpath
import sys
from dataclasses import dataclass

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from taxi import alias_history, cli, config, data, layout, registry, storage, store_registry, tracking
from taxi.promotion import CHALLENGER, CHAMPION
from taxi.urls import redact

log = logging.getLogger("taxi.status")  # not __name__: that is "__main__" under python -m

MISSING = "missing"  # the alias column of a registration whose version this registry does not have
SCHEDULER_STATUSES = ("RUNNING", "FAILED", "DISABLED")  # DISABLED: failed too often, see config/luigid.cfg
COLUMNS = ("month", "version", "alias now", "decision", "gate RMSE", "registered (UTC)", "report", "reason")
SCORE_COLUMNS = ("month", "scored with", "live RMSE", "registered RMSE", "alert", "trips", "predictions")
ALERT = "ALERT"  # the alert column of a scored month whose live RMSE alerted (taxi.scoring.is_alert)


@dataclass(frozen=True)
class Version:
    """One version of a registered model as the registry has it now."""

    run_id: str
    aliases: tuple[str, ...]
    created: dt.datetime


@dataclass(frozen=True)
class Row:
    """One trained month: its registration record, with the alias and creation time the registry has now."""

    month: str
    version: int
    alias: str  # champion, challenger, none, or MISSING
    decision: str  # when it was registered
    gate_rmse: float
    registered: dt.datetime | None
    report: str
    reason: str  # the decision's reason
    folder: str  # the run folder, relative to the store
    run_id: str  # the MLflow run the version was registered from
    task_id: str  # the Luigi task that registered it


def registry_versions(name: str) -> dict[int, Version]:
    """Every version of the registered model `name` at the current tracking URI (none if it does not exist)."""
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases  # a version search leaves them out against a server
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {int(v.version): Version(v.run_id, tuple(a for a, at in aliases.items() if int(at) == int(v.version)),
                                    dt.datetime.fromtimestamp(v.creation_timestamp / 1000, dt.timezone.utc))
            for v in client.search_model_versions(f"name='{name}'")}


def registrations(store: str, color: str) -> list[tuple[str, dict]]:
    """(run folder relative to the store, its registration.json) of every registered run of `color`."""
    return [(posixpath.dirname(path), storage.read_json(storage.target(store, path)))
            for path in storage.list_targets(store, layout.RUNS.format(color=color), f"/{layout.REGISTRATION}")]


def make_row(store: str, folder: str, registration: dict, versions: dict[int, Version]) -> Row:
    """The row of one run folder (runs/{color}/{YYYY-MM}/...); MISSING when the registry lacks its version."""
    version = versions.get(registration["version"])
    if version is not None and version.run_id != registration["run_id"]:
        version = None  # the same number in another registry
    alias = MISSING if version is None else next(
        (a for a in (CHAMPION, CHALLENGER) if a in version.aliases), "none")
    return Row(month=layout.run_month(folder), version=registration["version"], alias=alias,
               decision=registration["decision"], gate_rmse=registration["gate_rmse"],
               registered=None if version is None else version.created,
               report=storage.target(store, posixpath.join(folder, layout.REPORT)).path, reason=registration["reason"],
               folder=folder, run_id=registration["run_id"], task_id=registration["task_id"])


def rows(store: str, color: str) -> list[Row]:
    """A row per registered run of `color` in the store, by month and version (none: no trained month)."""
    found = registrations(store, color)
    versions = registry_versions(registry.model_name(color)) if found else {}
    return sorted((make_row(store, folder, registration, versions) for folder, registration in found),
                  key=lambda r: (r.month, r.version))


def cells(row: Row) -> tuple[str, ...]:
    """The row's text under COLUMNS."""
    return (row.month, f"v{row.version}", row.alias, row.decision, f"{row.gate_rmse:.4f}",
            row.registered.strftime("%Y-%m-%d %H:%M:%S") if row.registered else "-", row.report, row.reason)


def table(rows: list[Row]) -> str:
    """The rows as aligned plain-text columns under a header, by month and version."""
    return aligned([COLUMNS] + [cells(r) for r in sorted(rows, key=lambda r: (r.month, r.version))])


def aligned(lines: list[tuple[str, ...]]) -> str:
    """Lines of cells as plain-text columns two spaces apart; the last column is not padded."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(line, widths)), line[-1]]) for line in lines)


def scorings(store: str, color: str) -> list[tuple[str, dict]]:
    """(folder relative to the store, its live.json) of every month of `color` scored in the store."""
    return [(posixpath.dirname(path), storage.read_json(storage.target(store, path)))
            for path in storage.list_targets(store, layout.SCORES.format(color=color), f"/{layout.LIVE}")]


def score_section(store: str, color: str) -> str:
    """The table of `color`'s scored months: the version each was scored with, its live and registered RMSE."""
    name = registry.model_name(color)
    found = scorings(store, color)
    if not found:
        return f"{name}: no scored month in {store}"
    rows = [(live["month"], f"v{live['model_version']}", f"{live['rmse']:.4f}",
             "-" if live["registered_rmse"] is None else f"{live['registered_rmse']:.4f}",
             ALERT if live["alert"] else "-", f"{live['rows']:,}",
             storage.target(store, posixpath.join(folder, layout.PREDICTIONS)).path)
            for folder, live in sorted(found, key=lambda found: (found[1]["month"], found[1]["model_version"]))]
    text = f"{name} scored months (store {store})\n{aligned([SCORE_COLUMNS, *rows])}"
    if any(row[4] == ALERT for row in rows):
        text += (f"\n{ALERT}: the live RMSE is more than its alert share (live.json) above the RMSE the version was "
                 f"registered with")
    return text


def color_section(store: str, tracking_uri: str, color: str) -> str:
    """The table of `color`'s trained months, titled with the model, registry and store."""
    name = registry.model_name(color)
    found = rows(store, color)
    if not found:
        return f"{name}: no trained month in {store}"
    text = f"{name} (registry {tracking_uri}, store {store})\n{table(found)}"
    if any(row.alias == MISSING for row in found):
        text += f"\n{MISSING}: registered in another registry (see its registration.json), not in {tracking_uri}"
    return text


# ---------------------------------------------------------------------------------------------------------------
# The alias history (taxi.alias_history): every move of a color's aliases, by a decision or a rollback


def alias_moves(color: str) -> list[alias_history.Move]:
    """The alias moves of `color`'s registered model, oldest first (none if it does not exist)."""
    try:
        tags = MlflowClient().get_registered_model(registry.model_name(color)).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return alias_history.moves(tags)


def history_section(color: str) -> str:
    """The alias history of `color` as a table, newest first, or one line saying there is none."""
    name = registry.model_name(color)
    moves = alias_moves(color)
    if not moves:
        return f"{name} alias history: no alias moved yet"
    return f"{name} alias history (newest first)\n{aligned(alias_history.table(moves))}"


# ---------------------------------------------------------------------------------------------------------------


def scheduler_tasks(url: str) -> list[dict]:
    """luigid's RUNNING, FAILED and DISABLED tasks (with their "task_id") from its JSON API, least recently updated
    first."""
    tasks: list[dict] = []
    for status in SCHEDULER_STATUSES:
        answer = requests.get(f"{url.rstrip('/')}/api/task_list", params={"data": json.dumps({"status": status})},
                              timeout=10)
        answer.raise_for_status()
        tasks += [{**task, "task_id": task_id} for task_id, task in answer.json()["response"].items()]
    return sorted(tasks, key=lambda task: task["last_updated"] or 0)


def scheduler_section(url: str | None) -> str:
    """What luigid has running, failed or disabled, or one line saying why there is nothing to show."""
    if url is None:
        return "luigid: no central scheduler is configured ([core] local_scheduler = true)"
    shown = redact(url)
    try:
        tasks = scheduler_tasks(url)
    except requests.RequestException as exc:
        return f"luigid {shown}: not reachable ({type(exc).__name__})"
    counts = ", ".join(f"{sum(t['status'] == s for t in tasks)} {s.lower()}" for s in SCHEDULER_STATUSES)
    lines = [f"luigid {shown}: {counts}"]
    for task in tasks:
        since = dt.datetime.fromtimestamp(task["last_updated"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        message = f"  {task['status_message']}" if task.get("status_message") else ""
        lines.append(f"{task['status']:<8} {since}  {task['display_name']}{message}")
    return "\n".join(lines)


def status(colors: list[str]) -> str:
    """The whole status text: the trained and the scored months and the alias history of each color, then luigid's
    section."""
    store = config.TaxiConfig().store
    store = store if storage.is_s3(store) else os.path.abspath(store)
    settings = config.MlflowConfig()
    tracking_uri = store_registry.connect(store, settings.uri, settings.experiment, settings.artifact_root)
    sections = [section for color in colors
                for section in (color_section(store, tracking_uri, color), score_section(store, color),
                                history_section(color))]
    return "\n\n".join([*sections, scheduler_section(config.scheduler_url())])


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="status", description=__doc__.split("\n\n")[0])
    parser.add_argument("color", nargs="?", choices=data.COLORS, help="one color (default: every color)")
    args = parser.parse_args(argv)
    config.load()
    config.configure_logging()
    try:
        text = status([args.color] if args.color else list(data.COLORS))
    except MlflowException as exc:
        log.error("the MLflow registry at %s answered: %s", redact(mlflow.get_tracking_uri()), first_line(exc.message))
        sys.exit(1)
    except (tracking.TrackingUnavailable, storage.StoreUnreachable, storage.StoreRefused,
            storage.CorruptTarget, store_registry.OtherRegistry) as exc:
        log.error("%s", first_line(str(exc)))
        sys.exit(1)
    cli.print_output(text)


if __name__ == "__main__":
    main()
