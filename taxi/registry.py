"""The model registry: registering a run's model and the champion/challenger decision (pure: no luigi)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Callable

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from taxi.tracking import local_registry_lock, runs_of_task
from taxi.urls import redact

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG = "taxi.decision"  # on a model version: the decision made for it, written before the alias moves
RMSE_TAG = "taxi.rmse"  # on a model version: the RMSE it was registered with (registered_rmse)

class RegistryError(RuntimeError):
    """The registry answered with an error: nothing was decided, the alias did not move."""


@dataclass(frozen=True)
class Decision:
    """Where a version's alias goes, and the champion it was compared with (None: there was none)."""

    alias: str
    previous_champion_version: int | None
    previous_champion_val_rmse: float | None


def model_name(color: str) -> str:
    return f"taxi-duration-{color}"


def register(name: str, run_id: str, model_uri: str, val_rmse: float,
             score_version: Callable[[str], float]) -> dict:
    """Register the run's model (once per run), make it champion if it beats the current champion, else challenger.

    `score_version(models_uri)` scores a registered version on this model's validation month. Only "no such
    model" or "no champion alias" means there is no champion; any other registry error raises RegistryError
    before the alias moves."""
    client = MlflowClient()
    with local_registry_lock(mlflow.get_tracking_uri()):
        champion = _champion_version(client, name)
        version = _version_of_run(client, name, run_id) or _create_version(client, name, run_id, model_uri)
        decision = _recorded_decision(version, champion)
        if decision is None:
            if champion is None:
                decision = Decision(CHAMPION, None, None)
            else:
                champion_rmse = score_version(f"models:/{name}/{champion}")
                decision = Decision(CHAMPION if val_rmse < champion_rmse else CHALLENGER, champion, champion_rmse)
            # recorded before the alias moves, so that a rerun after a crash reports what this run compared with
            _call(f"record the decision on {name} v{version.version}", client.set_model_version_tag, name,
                  version.version, RMSE_TAG, str(val_rmse))
            _call(f"record the decision on {name} v{version.version}", client.set_model_version_tag, name,
                  version.version, DECISION_TAG, json.dumps(asdict(decision)))
        _call(f"set the {decision.alias} alias of {name}", client.set_registered_model_alias, name, decision.alias,
              version.version)
    previous = decision.previous_champion_version
    log.info("%s version %s is now %s (val_rmse %.4f, champion before: %s)", name, version.version, decision.alias,
             val_rmse, "none" if previous is None else f"v{previous} {decision.previous_champion_val_rmse:.4f}")
    return {"name": name, "version": int(version.version), "run_id": run_id, "model_uri": model_uri,
            "val_rmse": val_rmse, "decision": decision.alias, "previous_champion_version": previous,
            "previous_champion_val_rmse": decision.previous_champion_val_rmse}


def registered_rmse(name: str, version: int) -> float | None:
    """The RMSE version `version` of `name` was registered with: what its live error is compared with. None for a
    version registered without one (by hand, or before taxi recorded it)."""
    tags = _call(f"read {name} v{version}", MlflowClient().get_model_version, name, str(version)).tags
    return float(tags[RMSE_TAG]) if RMSE_TAG in tags else None


def champion_version(name: str, outcome: str) -> int | None:
    """The version the champion alias of `name` points at now; None when there is no such model or alias. Any other
    registry error raises RegistryError, saying `outcome`."""
    return _champion_version(MlflowClient(), name, create=False, outcome=outcome)


def _call(what: str, method: Callable, *args):
    """`method(*args)`, with any MLflow error turned into a RegistryError that says what could not be done."""
    try:
        return method(*args)
    except MlflowException as exc:
        raise _registry_error(what, exc) from None


def _registry_error(what: str, exc: MlflowException, outcome: str = "the champion alias did not move") -> RegistryError:
    return RegistryError(f"cannot {what} at {redact(mlflow.get_tracking_uri())}: {exc.message}; {outcome}: fix the "
                         f"tracking server and rerun")


def _version_of_run(client: MlflowClient, name: str, run_id: str):
    """The version already registered for `run_id` (a rerun after a crash), if any."""
    existing = _call(f"search the versions of {name}", client.search_model_versions,
                     f"name='{name}' and run_id='{run_id}'")
    return existing[0] if existing else None


def _create_version(client: MlflowClient, name: str, run_id: str, model_uri: str):
    return client.create_model_version(name, model_uri, run_id=run_id, model_id=logged_model_id(model_uri))


def logged_model_id(model_uri: str) -> str | None:
    """The id of MLflow's logged model a model URI names (models:/m-...), None for another URI."""
    return model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None


def champion_params(name: str) -> tuple[int, dict[str, str]] | None:
    """The champion's version and the parameters its training run logged; None when there is no champion. Any
    other registry error raises RegistryError."""
    client = MlflowClient()
    outcome = "tuning did not start"
    version = _champion_version(client, name, create=False, outcome=outcome)
    if version is None:
        return None
    try:
        run_id = client.get_model_version(name, str(version)).run_id
        return version, dict(client.get_run(run_id).data.params)
    except MlflowException as exc:
        raise _registry_error(f"read the parameters of {name} v{version}", exc, outcome) from None


def _champion_version(client: MlflowClient, name: str, create: bool = True,
                      outcome: str = "the champion alias did not move") -> int | None:
    """The version the champion alias points at; None only when the model or the alias does not exist (the model
    is then created, if `create`). Any other error raises RegistryError."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise _registry_error(f"read the {CHAMPION} alias of {name}", exc, outcome) from None
        if not create:
            return None
        try:
            client.create_registered_model(name, description="NYC taxi trip duration (minutes), trained by taxi")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # created by another scheduler's run meanwhile: fine
                raise _registry_error(f"create registered model {name}", exc) from None
        return None
    version = model.aliases.get(CHAMPION)
    return None if version is None else int(version)


def _recorded_decision(version, champion: int | None) -> Decision | None:
    """The decision an earlier attempt recorded for this version, if the champion is still the one it compared with
    (or is this version): then the rerun finishes that decision instead of comparing the model with itself."""
    recorded = version.tags.get(DECISION_TAG)
    if recorded is None:
        return None
    decision = Decision(**json.loads(recorded))
    return decision if champion in (decision.previous_champion_version, int(version.version)) else None


def registered_run_of_task(experiment: str, name: str, task_id: str) -> tuple[str, str] | None:
    """(run id, model URI) of a version of `name` registered from a run that Luigi task `task_id` logged in
    `experiment` of this registry, if any: an earlier attempt's model, to register again instead of a copy."""
    client = MlflowClient()
    for run in runs_of_task(client, experiment, task_id):
        version = _version_of_run(client, name, run.info.run_id)
        if version is not None:
            return run.info.run_id, version.source
    return None
