"""One store, one registry: the store records the registry it serves, and a run, `scripts/status` or the operator
page pointed at another registry fails naming both (pure: no luigi).

A registry is known by its pipeline experiment's id and creation time, not by its URL: the same MLflow server
reached through a tunnel or a proxy is the same registry, and a new database with the same URL is another.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import mlflow

from taxi import layout, storage, tracking


class OtherRegistry(RuntimeError):
    """The store serves another registry than the one configured now."""


@dataclass(frozen=True)
class Registry:
    """A registry as the store records it: its experiment's id and creation time (ms), and its URL for messages."""

    experiment_id: str
    created: int
    tracking_uri: str

    def same_as(self, other: Registry) -> bool:
        return (self.experiment_id, self.created) == (other.experiment_id, other.created)

    def __str__(self) -> str:
        created = dt.datetime.fromtimestamp(self.created / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return f"the registry at {self.tracking_uri} (experiment {self.experiment_id} created {created} UTC)"


def current(experiment: str, tracking_uri: str) -> Registry | None:
    """The registry mlflow points at now, by `experiment` (None when it has no such experiment yet)."""
    found = mlflow.get_experiment_by_name(experiment)
    return None if found is None else Registry(found.experiment_id, found.creation_time, tracking_uri)


def recorded(store: str) -> Registry | None:
    """The registry the store serves, None before a run has recorded one."""
    record = storage.target(store, layout.REGISTRY_RECORD)
    if not record.exists():
        return None
    content = storage.read_json(record)
    try:
        return Registry(str(content["experiment_id"]), int(content["created"]), str(content["tracking_uri"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise storage.CorruptTarget(f"{record.path} records no registry ({type(exc).__name__}: {exc}); write it "
                                    f"again by hand, or delete it so that the next run records its own") from None


def check(store: str, experiment: str, tracking_uri: str) -> None:
    """Raise OtherRegistry when the store serves another registry than the one mlflow points at now."""
    served, now = recorded(store), current(experiment, tracking_uri)
    if served is not None and (now is None or not served.same_as(now)):
        now_text = str(now) if now else f"the registry at {tracking_uri} (no experiment {experiment} there)"
        raise OtherRegistry(
            f"the store {store} serves {served}, but this is {now_text}. A store serves one registry: point "
            f"[mlflow] tracking_uri (or MLFLOW_TRACKING_URI) at the store's registry, or give this registry a store "
            f"of its own ([taxi] store)")


def bind(store: str, experiment: str, tracking_uri: str) -> None:
    """Record the registry mlflow points at now as the store's, if it serves none yet (after `check`)."""
    if recorded(store) is None:
        storage.write_json(asdict(current(experiment, tracking_uri)),
                           storage.target(store, layout.REGISTRY_RECORD))


def connect(store: str, tracking_uri: str, experiment: str, artifact_location: str | None = None,
            record: bool = False) -> str:
    """tracking.connect, refusing (OtherRegistry) before anything is written there a registry the store does not
    serve; `record`: a store that serves none yet serves this one. Returns the URI as it is recorded."""
    uri = tracking.connect(tracking_uri, experiment, artifact_location,
                           verify=lambda uri: check(store, experiment, uri))
    if record:
        bind(store, experiment, uri)
    return uri
