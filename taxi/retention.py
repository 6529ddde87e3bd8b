"""What of the store to keep, from the task graph and the registry, and what is stale (`python -m taxi.retention`,
what scripts/gc runs; docs/operations.md "Retention").

Kept: every target that a registered version with an alias needs to be rebuilt, re-reported or re-scored (the graph
behind its RegisterModel, recorded in its registration.json as `needs`, and the graph of each month it scored); the
targets of the current settings' graph for the newest `[gc] keep_months` months of each color; and every file
modified in the last `[gc] min_age_hours`, since a running task may be writing it (under a Luigi temporary name) or
be about to read it. Any other file at a path taxi.layout declares, or a Luigi temporary, is stale. Task logs, the
store's registry record and files the layout does not declare are left alone. Nothing here touches the registry's
versions or aliases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import posixpath
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable

import luigi
import luigi.task

from taxi import cli, config, data, layout, storage
from taxi.promotion import CHAMPION

log = logging.getLogger("taxi.retention")  # not __name__: that is "__main__" under python -m

TEMPORARY = re.compile(r"-luigi-tmp-\d+$")  # Luigi writes a target under its path plus this, then renames it
MANAGED = [t for t in layout.templates() if t not in (layout.TASK_LOG, layout.TASK_LOG_RECORD, layout.REGISTRY_RECORD)]
REGISTRATION = layout.RUN.replace("{name}", layout.REGISTRATION)
SCORE_FILES = [layout.SCORE.replace("{name}", name) for name in layout.SCORE_FILES]
CURRENT = "the current settings' targets of the newest {months} months"
FIELD_PATTERNS = {"ym": r"\d{4}-\d{2}", "version": r"\d+"}  # any other field: one path segment or part of one


class RetentionConfig(luigi.Config):
    """The `[gc]` section: what scripts/gc keeps besides what versions with an alias need."""

    keep_months = luigi.IntParameter(default=12, description="the newest months of each color in the store whose "
                                                             "targets of the current settings are kept")
    min_age_hours = luigi.FloatParameter(default=24.0, description="a file modified this recently is never deleted: "
                                                                   "a running task may be writing or reading it")

    @classmethod
    def get_task_family(cls) -> str:
        return "gc"


def validate(keep_months: int, min_age_hours: float) -> None:
    if keep_months < 0:
        raise ValueError(f"[gc] keep_months must be at least 0, got {keep_months}")
    if min_age_hours < 0:
        raise ValueError(f"[gc] min_age_hours must be at least 0, got {min_age_hours}")


def _compile(template: str) -> re.Pattern:
    """A template as a regular expression with a named group per field (a repeated field must repeat its value)."""
    seen: set[str] = set()
    parts = []
    for part in re.split(r"(\{\w+\})", template):
        name = part[1:-1] if part.startswith("{") else None
        if name is None:
            parts.append(re.escape(part))
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            parts.append(f"(?P<{name}>{FIELD_PATTERNS.get(name, '[^/]+')})")
            seen.add(name)
    return re.compile("".join(parts))


PATTERNS = [(template, _compile(template)) for template in MANAGED]


def parse(path: str) -> tuple[str, dict[str, str]] | None:
    """(the taxi.layout template of a target's path, its fields); None for a path no target has."""
    for template, pattern in PATTERNS:
        found = pattern.fullmatch(path)
        if found:
            return template, found.groupdict()
    return None


def is_temporary(path: str) -> bool:
    return bool(TEMPORARY.search(path))


def newest_months(months: Iterable[str], count: int) -> list[str]:
    """The `count` newest of `months` (YYYY-MM), oldest first."""
    ordered = sorted(set(months))
    return ordered[max(len(ordered) - count, 0):]


def store_months(paths: Iterable[str]) -> dict[str, set[str]]:
    """The months each color has a target of: color -> {YYYY-MM}."""
    months: dict[str, set[str]] = {}
    for path in paths:
        parsed = None if is_temporary(path) else parse(path)
        if parsed:
            months.setdefault(parsed[1]["color"], set()).add(parsed[1]["ym"])
    return months


@dataclass(frozen=True)
class Aliased:
    """A registered version with at least one alias, as the registry has it now."""

    color: str
    name: str
    version: int
    run_id: str
    aliases: tuple[str, ...]

    def label(self) -> str:
        return f"{self.name} v{self.version} ({', '.join('@' + alias for alias in self.aliases)})"


def registration_needs(registrations: list[tuple[str, dict]], aliased: list[Aliased], registry: str,
                       paths: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """What the registrations of versions with an alias need (path -> why), and a note per aliased version the store
    has no registration of. A registration made in another registry than `registry` is kept whole: its aliases
    cannot be read here. A registration without `needs` (written before taxi recorded them) keeps every target of
    its color in its training and validation months. `paths`: every target path of the store."""
    keep: dict[str, str] = {}
    by_version = {(a.name, a.version, a.run_id): a for a in aliased}
    found = set()
    for folder, record in registrations:
        if record.get("tracking_uri") != registry:
            why = f"registered in another registry, {record.get('tracking_uri')}"
        elif (record["name"], record["version"], record["run_id"]) in by_version:
            found.add((record["name"], record["version"], record["run_id"]))
            why = f"{by_version[record['name'], record['version'], record['run_id']].label()} needs them"
        else:
            continue
        for path in record.get("needs") or _months_targets(folder, record["month"], paths):
            keep.setdefault(path, why)
    notes = [f"{a.label()}: no registration in the store, so nothing of its training is kept for it"
             for key, a in by_version.items() if key not in found]
    return keep, notes


def _months_targets(folder: str, month: str, paths: Iterable[str]) -> list[str]:
    """Every target of the run folder's color in its training month and the month after."""
    color = folder.split("/")[1]
    year, number = int(month[:4]), int(month[5:])
    months = {month, data.ym(*data.next_month(year, number))}
    return [path for path in paths if (parsed := parse(path)) and parsed[1]["color"] == color
            and parsed[1]["ym"] in months]


@dataclass
class Plan:
    """Every file of the store, sorted out: kept (path -> why), stale, or left alone."""

    kept: dict[str, str] = field(default_factory=dict)
    kept_bytes: int = 0
    stale: list[storage.StoredFile] = field(default_factory=list)
    recent: list[storage.StoredFile] = field(default_factory=list)  # unneeded, but modified within min_age_hours
    other: list[storage.StoredFile] = field(default_factory=list)  # task logs and files the layout does not declare


def sort_out(files: list[storage.StoredFile], keep: dict[str, str], now: float, min_age_hours: float) -> Plan:
    """Each file kept (it is in `keep`), recent (modified within `min_age_hours` of `now`: a running task may be
    writing or reading it), other (neither a target nor a temporary) or stale."""
    plan = Plan()
    for stored in files:
        if stored.path in keep:
            plan.kept[stored.path] = keep[stored.path]
            plan.kept_bytes += stored.size
        elif not is_temporary(stored.path) and parse(stored.path) is None:
            plan.other.append(stored)
        elif now - stored.modified < min_age_hours * 3600:
            plan.recent.append(stored)
        else:
            plan.stale.append(stored)
    return plan


# --- the task graph ---

def graph(roots: Iterable[luigi.Task]) -> list[luigi.Task]:
    """Every task the roots require, directly or not, the roots included."""
    tasks: dict[str, luigi.Task] = {}
    stack = list(roots)
    while stack:
        task = stack.pop()
        if task.task_id not in tasks:
            tasks[task.task_id] = task
            stack.extend(luigi.task.flatten(task.requires()))
    return list(tasks.values())


def needs(roots: Iterable[luigi.Task], store: str) -> list[str]:
    """The path relative to `store` of every target in the roots' graph: what rebuilding them takes."""
    return sorted({storage.relative(store, target) for task in graph(roots)
                   for target in luigi.task.flatten(task.output())})


def month_roots(color: str, ym: str, champion: int | None) -> list[luigi.Task]:
    """The tasks of a month under the current settings: its RegisterModel (its CleanMonth while the month after is
    not over) and its scoring with the champion."""
    from taxi.pipeline.model import RegisterModel
    from taxi.pipeline.prepare import CleanMonth

    year, month = int(ym[:4]), int(ym[5:])
    try:
        data.validate_month(color, year, month, needs_next_month=True)
        trainable = True
    except ValueError:
        trainable = False
    roots = [(RegisterModel if trainable else CleanMonth)(color=color, year=year, month=month)]
    if champion is not None:
        roots.append(score_version(color, ym, champion))
    return roots


def score_version(color: str, ym: str, version: int) -> luigi.Task:
    from taxi.pipeline.scoring import ScoreVersion

    return ScoreVersion(color=color, year=int(ym[:4]), month=int(ym[5:]), model_version=version)


# --- the registry ---

def aliased_versions(colors: Iterable[str]) -> list[Aliased]:
    """Every version with an alias of each color's model at the current tracking URI. A registry error raises
    RegistryError: without the aliases nothing can be judged stale."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from taxi import registry

    client, found = MlflowClient(), []
    for color in colors:
        name = registry.model_name(color)
        try:
            try:
                aliases = client.get_registered_model(name).aliases
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue
                raise
            versions: dict[int, list[str]] = {}
            for alias, version in sorted(aliases.items()):
                versions.setdefault(int(version), []).append(alias)
            found += [Aliased(color, name, version, client.get_model_version(name, str(version)).run_id, tuple(names))
                      for version, names in sorted(versions.items())]
        except MlflowException as exc:
            raise registry.RegistryError(f"cannot read the aliases of {name}: {exc.message}; nothing was deleted: "
                                         f"fix the tracking server and rerun") from None
    return found


# --- the whole judgement ---

def plan(store: str, registry: str, keep_months: int, min_age_hours: float) -> tuple[Plan, list[str]]:
    """The store's files sorted out against the registry's aliases now and the current settings; and notes."""
    files = storage.list_files(store)
    parsed = {f.path: found for f in files if not is_temporary(f.path) and (found := parse(f.path))}
    targets = list(parsed)
    aliased = aliased_versions(data.COLORS)
    registrations = [(posixpath.dirname(path), storage.read_json(storage.target(store, path)))
                     for path, (template, _) in parsed.items() if template == REGISTRATION]
    keep, notes = registration_needs(registrations, aliased, registry, targets)
    for version in aliased:  # what re-scoring each month it scored takes
        scored = sorted({fields["ym"] for template, fields in parsed.values() if template in SCORE_FILES
                         and fields["color"] == version.color and int(fields["version"]) == version.version})
        for path in needs([score_version(version.color, ym, version.version) for ym in scored], store):
            keep.setdefault(path, f"{version.label()} needs them")
    champions = {a.color: a.version for a in aliased if CHAMPION in a.aliases}
    current = CURRENT.format(months=keep_months)
    for color, months in sorted(store_months(targets).items()):
        roots = [root for ym in newest_months(months, keep_months)
                 for root in month_roots(color, ym, champions.get(color))]
        for path in needs(roots, store):
            keep.setdefault(path, current)
    return sort_out(files, keep, time.time(), min_age_hours), notes


def report(plan: Plan, min_age_hours: float, deleted: bool) -> str:
    """What scripts/gc prints: why files are kept, the stale files with their size, what is left alone."""
    reasons: dict[str, int] = {}
    for why in plan.kept.values():
        reasons[why] = reasons.get(why, 0) + 1
    lines = [f"kept {len(plan.kept)} files, {plan.kept_bytes:,} bytes{':' if plan.kept else ''}"]
    lines += [f"  {count:>5}  {why}" for why, count in sorted(reasons.items(), key=lambda item: -item[1])]
    stale_bytes = sum(f.size for f in plan.stale)
    lines.append(f"stale {len(plan.stale)} files, {stale_bytes:,} bytes{':' if plan.stale else ''}")
    width = max([len(f"{f.size:,}") for f in plan.stale] + [5])
    lines += [f"  {f.size:>{width},}  {_utc(f.modified)}  {f.path}" for f in plan.stale]
    lines.append(f"left alone: {len(plan.recent)} unneeded files modified in the last {min_age_hours:g} hours "
                 f"([gc] min_age_hours), {len(plan.other)} task logs and files taxi.layout does not declare")
    if deleted:
        lines.append(f"deleted {len(plan.stale)} stale files, {stale_bytes:,} bytes")
    else:
        lines.append(f"dry run: nothing deleted; scripts/gc --delete deletes the {len(plan.stale)} stale files")
    return "\n".join(lines)


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fail(exc: BaseException, outcome: str) -> None:
    """One line on stderr naming what went wrong and what became of the store, then exit 1."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.error("%s%s", text, "" if outcome in text else f"; {outcome}")
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gc", description="List the store's files that no version with an alias "
                                     "and no current target of the newest months needs; delete them with --delete.")
    parser.add_argument("--delete", action="store_true", help="delete the stale files (default: list them only)")
    parser.add_argument("--keep-months", type=int, help="newest months kept per color (default: [gc] keep_months)")
    parser.add_argument("--min-age-hours", type=float, help="never delete a file modified this recently (default: "
                                                            "[gc] min_age_hours)")
    args = parser.parse_args(argv)
    config.load()
    config.configure_logging()
    from mlflow.exceptions import MlflowException

    from taxi import registry, store_registry, tracking

    settings = RetentionConfig()
    keep_months = settings.keep_months if args.keep_months is None else args.keep_months
    min_age_hours = settings.min_age_hours if args.min_age_hours is None else args.min_age_hours
    try:
        validate(keep_months, min_age_hours)
        store = config.TaxiConfig().store
        store = store if storage.is_s3(store) else os.path.abspath(store)
        mlflow_settings = config.MlflowConfig()
        uri = store_registry.connect(store, mlflow_settings.uri, mlflow_settings.experiment,
                                     mlflow_settings.artifact_root)
        found, notes = plan(store, uri, keep_months, min_age_hours)
    except (ValueError, MlflowException, registry.RegistryError, tracking.TrackingUnavailable,
            storage.StoreUnreachable, storage.StoreRefused, storage.CorruptTarget, store_registry.OtherRegistry) as exc:
        _fail(exc, "nothing was deleted")
    if args.delete:
        try:
            storage.delete_files(store, [f.path for f in found.stale])
        except (OSError, storage.StoreUnreachable, storage.StoreRefused) as exc:
            _fail(exc, "some stale files may be left: run scripts/gc --delete again")
    text = "\n".join([f"store {store}, registry {uri}", *notes, report(found, min_age_hours, args.delete)])
    cli.print_output(text)


if __name__ == "__main__":
    main()
