"""What the page reads about tasks: their state in luigid's JSON API and their attempts' logs in the store."""

from __future__ import annotations

import json
import re

import requests
from luigi.scheduler import TASK_FAMILY_RE

from taxi import layout, storage

TASK_ID = re.compile(r"[A-Za-z0-9_.]+")  # Luigi's task ids: the family, then parameters with [^A-Za-z0-9_] as _
ATTEMPT = re.compile(r"[A-Za-z0-9.-]+")
ACTIVE = ("PENDING", "RUNNING")


def valid_task_id(task_id: str) -> bool:
    return bool(TASK_ID.fullmatch(task_id)) and ".." not in task_id and TASK_FAMILY_RE.match(task_id) is not None


def family(task_id: str) -> str:
    return TASK_FAMILY_RE.match(task_id).group(1)


def _api(scheduler: str, method: str, **data) -> dict:
    answer = requests.get(f"{scheduler}/api/{method}", params={"data": json.dumps(data)}, timeout=10)
    answer.raise_for_status()
    return answer.json()["response"]


def graph(scheduler: str, task_id: str) -> list[dict]:
    """The task and everything it depends on as luigid has them now, dependencies first (none if luigid has
    forgotten the task): each {task_id, name, params, status, status_message, progress, tracking_url}."""
    found = _api(scheduler, "dep_graph", task_id=task_id, include_done=True)
    return [{"task_id": tid, "name": found[tid].get("name", ""), "params": found[tid].get("params", {}),
             "status": found[tid].get("status", "UNKNOWN"), "status_message": found[tid].get("status_message"),
             "progress": found[tid].get("progress_percentage"), "tracking_url": found[tid].get("tracking_url")}
            for tid in _dependencies_first(found, task_id)]


def _dependencies_first(found: dict[str, dict], root: str) -> list[str]:
    """The task ids of a dependency graph, each after everything it depends on (depth first from the root)."""
    order: list[str] = []
    stack = [(root, False)] if root in found else []
    while stack:
        task_id, expanded = stack.pop()
        if task_id in order:
            continue
        if expanded:
            order.append(task_id)
            continue
        stack.append((task_id, True))
        stack += [(dep, False) for dep in reversed(found[task_id].get("deps", [])) if dep in found and dep not in order]
    return order


def title(task: dict) -> str:
    """A task as Luigi prints it: Family(name=value, ...)."""
    return f"{task['name']}({', '.join(f'{k}={v}' for k, v in task['params'].items())})"


def attempts(store: str, task_id: str) -> list[dict]:
    """The records of every attempt of the task in the store, newest first."""
    folder = layout.TASK_LOGS.format(family=family(task_id), task_id=task_id)
    records = [storage.read_json(storage.target(store, path))
               for path in storage.list_targets(store, folder, ".json")]
    return sorted(records, key=lambda record: record["started"], reverse=True)


def log_text(store: str, task_id: str, attempt: str) -> str:
    """One attempt's log lines ("" before its first write)."""
    target = storage.target(store, layout.task_log(family(task_id), task_id, attempt)["log"])
    return storage.read(target, bytes.decode) if target.exists() else ""
