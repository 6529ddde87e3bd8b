"""`python -m taxi.rollback`, what scripts/champion runs: a color's versions with their decisions and its alias
history, and moving its champion back on the record: the choice of the version to go back to, and the move under
the decision lock. The move runs as the RollBackChampion task (taxi.pipeline.operations), which holds the
scheduler's `mlflow_registry` resource as RegisterModel does.

Refusals (no such version, another color's, no reason) are one line on stderr and exit 2; failures exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import sys
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from taxi import alias_history, cli, config, data, registry, status, storage, store_registry, tracking
from taxi.alias_history import Move
from taxi.promotion import CHAMPION
from taxi.tracking import local_registry_lock
from taxi.urls import redact

log = logging.getLogger("taxi.rollback")  # not __name__: that is "__main__" under python -m

MAX_REASON = 500  # characters
TARGET = re.compile(r"(?:models:/)?(?:(?P<name>[\w.-]+)[/@])?v?(?P<version>\d+)")  # 3, v3, NAME/3, models:/NAME/3


class RollbackRefused(ValueError):
    """The rollback asked for cannot be made; the message says why and which versions there are."""


@dataclass(frozen=True)
class Version:
    """A registered version as the rollback list shows it: its aliases now and the decision made for it."""

    version: int
    aliases: tuple[str, ...]
    decision: str  # "-" for a version registered by hand
    previous_champion: int | None  # the champion its decision compared with
    gate_rmse: float | None
    created: dt.datetime
    reason: str

    def cells(self) -> tuple[str, ...]:
        return (f"v{self.version}", ", ".join(self.aliases) or "-", self.decision,
                alias_history.version_text(self.previous_champion),
                "-" if self.gate_rmse is None else f"{self.gate_rmse:.4f}",
                self.created.strftime("%Y-%m-%d %H:%M:%S"), self.reason)


COLUMNS = ("version", "aliases now", "decision", "compared with", "gate RMSE", "registered (UTC)", "reason")


def check_reason(reason: str) -> str:
    """The reason on one line; RollbackRefused when there is none, or it is too long."""
    reason = " ".join(reason.split())
    if not reason:
        raise RollbackRefused("give the reason for the rollback (--reason): it is recorded in the alias history")
    if len(reason) > MAX_REASON:
        raise RollbackRefused(f"the reason has {len(reason)} characters; keep it to {MAX_REASON}")
    return reason


def version_of(version, aliases: dict[str, str]) -> Version:
    """A registry version with the decision its tags record."""
    tags = version.tags
    decision = json.loads(tags[registry.DECISION_TAG]) if registry.DECISION_TAG in tags else {}
    number = int(version.version)
    return Version(number, tuple(sorted(a for a, at in aliases.items() if int(at) == number)),
                   decision.get("decision", "-"), decision.get("previous_champion_version"),
                   float(tags[registry.RMSE_TAG]) if registry.RMSE_TAG in tags else None,
                   dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.timezone.utc),
                   tags.get(registry.REASON_TAG, ""))


def versions(client: MlflowClient, name: str) -> tuple[dict[int, Version], RegisteredModel]:
    """Every version of `name` by number, and the registered model (its aliases and tags); RollbackRefused when
    there is no such model."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RollbackRefused(f"the registry {redact(mlflow.get_tracking_uri())} has no model {name}: no month "
                                  f"of this color was registered there") from None
        raise
    return {int(v.version): version_of(v, model.aliases)
            for v in client.search_model_versions(f"name='{name}'")}, model


def champion_of(model: RegisteredModel) -> int | None:
    version = model.aliases.get(CHAMPION)
    return None if version is None else int(version)


def listed(numbers) -> str:
    return ", ".join(f"v{n}" for n in sorted(numbers)) or "none"


def previous_champion(current: int, found: dict[int, Version]) -> int:
    """The champion that `current` replaced: the one its own champion decision compared with. RollbackRefused when
    `current` did not become champion by a decision (a rollback or a hand made it), or was the first champion."""
    decided = found[current]
    if decided.decision != CHAMPION:
        raise RollbackRefused(f"v{current} did not become champion by a decision of its own (its decision: "
                              f"{decided.decision}), so there is no previous champion to go back to: name the "
                              f"version with --to (versions: {listed(found)})")
    if decided.previous_champion is None:
        raise RollbackRefused(f"v{current} was the first champion: there is none before it; name a version with "
                              f"--to (versions: {listed(found)})")
    return decided.previous_champion


def target(name: str, to: str | None, current: int | None, found: dict[int, Version]) -> int:
    """The version to move the champion of `name` to: `to` (3, v3, NAME/3 or models:/NAME/3), else the previous
    champion. RollbackRefused, naming the versions there are, for a version of another model, one the registry
    does not have, the champion itself, or when there is no champion."""
    if current is None:
        raise RollbackRefused(f"{name} has no champion to roll back (versions: {listed(found)})")
    if to is None or not to.strip():
        version = previous_champion(current, found)
    else:
        match = TARGET.fullmatch(to.strip())
        if match is None:
            raise RollbackRefused(f"--to {to!r} is not a version: give its number (versions of {name}: "
                                  f"{listed(found)})")
        if match["name"] not in (None, name):
            raise RollbackRefused(f"{to} is a version of {match['name']}, not of {name}: a color's champion goes "
                                  f"back only to a version of its own (versions of {name}: {listed(found)})")
        version = int(match["version"])
    if version not in found:
        raise RollbackRefused(f"{name} has no version {version} in the registry (versions of {name}: "
                              f"{listed(found)})")
    if version == current:
        raise RollbackRefused(f"v{version} is the champion of {name} already (versions: {listed(found)})")
    return version


def roll_back(color: str, to: str | None, reason: str, who: str, via: str) -> Move:
    """Move the champion of `color` to version `to` (None: the previous champion), recorded in the alias history
    with `reason`, `who` and `via`, under the local decision lock; the caller holds the scheduler's resource."""
    reason = check_reason(reason)
    name = registry.model_name(color)
    client = MlflowClient()
    with local_registry_lock(mlflow.get_tracking_uri()):
        found, model = versions(client, name)
        version = target(name, to, champion_of(model), found)
        return registry.move_alias(client, name, CHAMPION, version, alias_history.ROLLBACK, reason, who, via)


def check(color: str, to: str | None, reason: str) -> tuple[int, int]:
    """(the champion now, the version it would go back to); RollbackRefused if it cannot. Before the decision lock:
    a refusal is told at once; roll_back checks again under the lock."""
    check_reason(reason)
    name = registry.model_name(color)
    client = MlflowClient()
    found, model = versions(client, name)
    return champion_of(model), target(name, to, champion_of(model), found)


def versions_section(color: str) -> str:
    """`scripts/champion list`'s table of one color: every version with its aliases now and its decision."""
    name = registry.model_name(color)
    try:
        found, _ = versions(MlflowClient(), name)
    except RollbackRefused as exc:
        return str(exc)
    rows = [found[number].cells() for number in sorted(found, reverse=True)]
    return f"{name} versions (registry {redact(mlflow.get_tracking_uri())})\n{status.aligned([COLUMNS, *rows])}"


def rollback_command(args: argparse.Namespace) -> int:
    """Check the request at once, then make it in the RollBackChampion task under the decision lock; the exit
    status (0 moved, 1 failed, 2 refused)."""
    import luigi
    import luigi.configuration

    from taxi.pipeline.operations import RollBackChampion

    try:
        current, version = check(args.color, args.to, args.reason)
    except RollbackRefused as exc:
        log.error("%s", exc)
        return 2
    task = RollBackChampion(color=args.color, to=args.to or "", reason=args.reason, who=args.who, via=args.via,
                            requested=dt.datetime.now(dt.timezone.utc).isoformat())
    log.info("rolling the champion of %s back from v%s to v%s (under the decision lock)",
             registry.model_name(args.color), current, version)
    # a worker without keep_alive gives up at once when a decision holds the resource; this one waits its turn
    luigi.configuration.get_config().set("worker", "keep_alive", "true")
    result = luigi.build([task], detailed_summary=True, workers=1, log_level="WARNING")
    if task.refused is not None:
        log.error("%s", task.refused)
        return 2
    if task.move is None:
        log.error("the rollback did not run: %s", status.first_line(result.summary_text))
        return 1
    move = task.move
    print(f"{registry.model_name(args.color)}: @{move.alias} moved from "
          f"{alias_history.version_text(move.from_version)} to v{move.to_version} by {move.who} ({move.via}): "
          f"{move.why}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="champion", description="A color's versions with their decisions and its "
                                     "alias history; or move its champion back, on the record.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("list", help="every version with its decision, and the alias history")
    show.add_argument("color", nargs="?", choices=data.COLORS, help="one color (default: every color)")
    back = commands.add_parser("rollback", help="move @champion back to the previous champion, or to --to N")
    back.add_argument("color", choices=data.COLORS)
    back.add_argument("--to", help="the version to go back to (default: the champion the current one replaced)")
    back.add_argument("--reason", required=True, help="why: recorded in the alias history")
    back.add_argument("--who", default=alias_history.os_user(),
                      help="who asks, as recorded (default: the OS user; the operator page gives its login)")
    back.add_argument("--via", default="scripts/champion", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config.load()
    config.configure_logging()
    try:
        settings = config.MlflowConfig()
        store = config.TaxiConfig().store
        store_registry.connect(store if storage.is_s3(store) else os.path.abspath(store), settings.uri,
                               settings.experiment, settings.artifact_root)
        if args.command == "rollback":
            sys.exit(rollback_command(args))
        colors = [args.color] if args.color else list(data.COLORS)
        cli.print_output("\n\n".join(section for color in colors
                                       for section in (versions_section(color), status.history_section(color))))
    except MlflowException as exc:
        log.error("the MLflow registry at %s answered: %s", redact(mlflow.get_tracking_uri()),
                  status.first_line(exc.message))
        sys.exit(1)
    except (tracking.TrackingUnavailable, registry.RegistryError, store_registry.OtherRegistry) as exc:
        log.error("%s", status.first_line(str(exc)))
        sys.exit(1)


if __name__ == "__main__":
    main()
