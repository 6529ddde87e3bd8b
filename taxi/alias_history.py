"""The history of a registered model's alias moves, kept in the registry itself because MLflow keeps none: one
registered-model tag per move, `taxi.alias_history.<UTC time>-<random>` = the move as compact JSON. Each move adds a
tag of its own (nothing is read, changed and written back), the keys sort in time order, and the history survives a
rebuilt store (pure: no luigi)."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import secrets
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "taxi.alias_history."  # the tags of the registered model that hold the history
TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # in the key: sorts as the times do
DECISION, ROLLBACK = "decision", "rollback"  # what moved the alias: the pipeline's champion decision, an operator
MAX_WHY = 2000  # characters of the reason kept in a move


@dataclass(frozen=True)
class Move:
    """One move of an alias: when, from which version (None: the alias was not set) to which, what moved it, why,
    who (the page's login or the OS user) and through what; `accepted` names a decision's flags set on purpose."""

    at: dt.datetime  # UTC
    alias: str
    from_version: int | None
    to_version: int
    action: str  # DECISION or ROLLBACK
    why: str
    who: str
    via: str  # "pipeline", "scripts/champion", "operator page"
    accepted: tuple[str, ...] = ()  # accept_drift, accept_contract_change

    def key(self, suffix: str | None = None) -> str:
        """The move's tag key: its time, then a random suffix that keeps two moves of one instant apart."""
        return f"{PREFIX}{self.at.astimezone(dt.timezone.utc).strftime(TIME_FORMAT)}-{suffix or secrets.token_hex(4)}"

    def encode(self) -> str:
        """The move as the tag's value (the time is in the key)."""
        return json.dumps({"alias": self.alias, "from": self.from_version, "to": self.to_version,
                           "action": self.action, "why": self.why[:MAX_WHY], "who": self.who, "via": self.via,
                           **({"accepted": list(self.accepted)} if self.accepted else {})},
                          separators=(",", ":"))

    @property
    def what(self) -> str:
        """The action as a table shows it: "rollback", "decision", or "decision (accept_drift)"."""
        return f"{self.action} ({', '.join(self.accepted)})" if self.accepted else self.action

    def cells(self) -> tuple[str, ...]:
        """The move's text under COLUMNS."""
        return (self.at.strftime("%Y-%m-%d %H:%M:%S"), self.alias, version_text(self.from_version),
                version_text(self.to_version), self.what, self.who, self.via, self.why)


COLUMNS = ("when (UTC)", "alias", "from", "to", "what", "who", "via", "why")


def version_text(version: int | None) -> str:
    """A version as the history shows it: v3, or - for none."""
    return "-" if version is None else f"v{version}"


def decode(key: str, value: str) -> Move:
    """The move a history tag holds; ValueError if the tag is not one."""
    try:
        at = dt.datetime.strptime(key.removeprefix(PREFIX).split("-", 1)[0], TIME_FORMAT).replace(
            tzinfo=dt.timezone.utc)
        fields = json.loads(value)
        return Move(at=at, alias=fields["alias"], from_version=fields["from"], to_version=int(fields["to"]),
                    action=fields["action"], why=fields["why"], who=fields["who"], via=fields["via"],
                    accepted=tuple(fields.get("accepted", ())))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{key} is no alias move ({exc})") from None


def moves(tags: dict[str, str]) -> list[Move]:
    """The moves a registered model's tags hold, oldest first; a history tag that is no move is left out, with a
    warning."""
    found = []
    for key in sorted(key for key in tags if key.startswith(PREFIX)):
        try:
            found.append(decode(key, tags[key]))
        except ValueError as exc:
            log.warning("%s", exc)
    return found


def superseded(found: list[Move], alias: str, version: int) -> bool:
    """Whether the history moved `alias` to `version` and then moved it again (a rollback, a later decision)."""
    of_alias = [move for move in found if move.alias == alias]
    to_version = [i for i, move in enumerate(of_alias) if move.to_version == version]
    return bool(to_version) and to_version[-1] < len(of_alias) - 1


def os_user() -> str:
    """Who runs this process, as the history records a command's or the pipeline's moves."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        return f"uid {os.getuid()}"


def table(found: list[Move]) -> list[tuple[str, ...]]:
    """The header and a line of cells per move, newest first."""
    return [COLUMNS, *(move.cells() for move in reversed(found))]
