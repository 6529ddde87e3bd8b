"""The model registry: registering a run's model and carrying out the champion decision (pure: no luigi)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict
from typing import Callable

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from taxi import alias_history
from taxi.alias_history import Move
from taxi.promotion import CHAMPION, Champion, Decision
from taxi.tracking import local_registry_lock, runs_of_task
from taxi.urls import redact

log = logging.getLogger(__name__)

DECISION_TAG = "taxi.decision"  # on a model version: the decision made for it, written before the alias moves
REASON_TAG = "taxi.reason"  # on a model version: the decision's reason, for a reader of the MLflow UI
RMSE_TAG = "taxi.rmse"  # on a model version: the gate RMSE it was registered with (registered_rmse)
MONTH_TAG = "train.month"  # on a training run: its training month (tracking.lineage_tags)

Decide = Callable[[Champion | None], Decision]


class RegistryError(RuntimeError):
    """The registry answered with an error: nothing was decided, the alias did not move."""


def model_name(color: str) -> str:
    return f"taxi-duration-{color}"


def register(name: str, run_id: str, model_uri: str, gate_rmse: float, score_version: Callable[[str], float],
             decide: Decide, accepted: dict[str, bool]) -> tuple[int, Decision]:
    """Register the run's model (once per run) and carry out `decide(the champion now)`: record the decision and
    its reason on the version, then move the alias it names (if any). Returns (version, decision).

    Everything the decision reads of the registry (the champion, its month, its input contract, its score on this
    model's gate rows through `score_version(models_uri)`) is read under the decision lock. `accepted` holds the
    operator's flags (promotion.Policy.accepted), recorded with the decision. Only "no such model" or "no champion
    alias" means there is no champion; any other registry error raises RegistryError before the alias moves."""
    client = MlflowClient()
    with local_registry_lock(mlflow.get_tracking_uri()):
        champion_version = _champion_version(client, name)
        version = _version_of_run(client, name, run_id) or _create_version(client, name, run_id, model_uri)
        decision = _recorded_decision(version, champion_version, accepted)
        if decision is None:
            champion = None
            if champion_version is not None:
                uri = f"models:/{name}/{champion_version}"
                champion = Champion(champion_version, _month_of(client, name, champion_version), score_version(uri),
                                    input_contract(uri))
            decision = decide(champion)
            # recorded before the alias moves, so that a rerun after a crash reports what this run compared with
            for tag, value in ((RMSE_TAG, str(gate_rmse)), (REASON_TAG, decision.reason),
                               (DECISION_TAG, json.dumps({**asdict(decision), **accepted}))):
                _call(f"record the decision on {name} v{version.version}", client.set_model_version_tag, name,
                      version.version, tag, value)
        elif decision.alias and alias_history.superseded(
                alias_history.moves(_call(f"read {name}", client.get_registered_model, name).tags), decision.alias,
                int(version.version)):
            # a rerun of a decision whose move was undone since (a rollback): the operator's move stands
            log.info("%s version %s: its %s move was undone since; left as it is", name, version.version,
                     decision.alias)
            return int(version.version), decision
        if decision.alias:
            move_alias(client, name, decision.alias, int(version.version), alias_history.DECISION, decision.reason,
                       alias_history.os_user(), "pipeline", tuple(flag for flag, value in accepted.items() if value))
    log.info("%s version %s: %s", name, version.version, decision.reason)
    return int(version.version), decision


def move_alias(client: MlflowClient, name: str, alias: str, version: int, action: str, why: str, who: str,
               via: str, accepted: tuple[str, ...] = ()) -> Move | None:
    """Point `alias` of `name` at `version`, first appending the move to the alias history; None when the alias is
    there already. A move an interrupted attempt recorded but did not make is made without a second entry. Call it
    under the decision lock (local_registry_lock, and the scheduler's mlflow_registry resource)."""
    model = _call(f"read {name}", client.get_registered_model, name)
    current = model.aliases.get(alias)
    current = None if current is None else int(current)
    if current == version:
        return None
    move = Move(dt.datetime.now(dt.timezone.utc), alias, current, version, action, why, who, via, accepted)
    latest = next((m for m in reversed(alias_history.moves(model.tags)) if m.alias == alias), None)
    if latest is None or (latest.from_version, latest.to_version) != (current, version):
        _call(f"record the move of the {alias} alias of {name}", client.set_registered_model_tag, name, move.key(),
              move.encode())
    _call(f"set the {alias} alias of {name}", client.set_registered_model_alias, name, alias, str(version))
    return move


def input_contract(model_uri: str) -> tuple[str, ...]:
    """A logged model's input contract, one "name (type)" per column of its signature ("name (type, optional)" for
    an optional one); empty for a model logged without a signature, or a version registered from files that are no
    MLflow model (by hand). Any other registry error raises RegistryError."""
    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ()
        raise _registry_error(f"read the signature of {model_uri}", exc) from None
    if signature is None or signature.inputs is None:
        return ()
    columns = []
    for spec in signature.inputs.to_dict():
        optional = "" if spec.get("required", True) else ", optional"
        columns.append(f"{spec.get('name')} ({spec['type']}{optional})")
    return tuple(columns)


def registered_rmse(name: str, version: int) -> float | None:
    """The RMSE version `version` of `name` was registered with: what its live error is compared with. None for a
    version registered without one (by hand, or before taxi recorded it)."""
    tags = _call(f"read {name} v{version}", MlflowClient().get_model_version, name, str(version)).tags
    return float(tags[RMSE_TAG]) if RMSE_TAG in tags else None


def champion_version(name: str, outcome: str) -> int | None:
    """The version the champion alias of `name` points at now; None when there is no such model or alias. Any other
    registry error raises RegistryError, saying `outcome`."""
    return _champion_version(MlflowClient(), name, create=False, outcome=outcome)


def _month_of(client: MlflowClient, name: str, version: int) -> str:
    """The training month of a registered version, from its training run's lineage tags."""
    run_id = _call(f"read {name} v{version}", client.get_model_version, name, str(version)).run_id
    return _call(f"read the run of {name} v{version}", client.get_run, run_id).data.tags[MONTH_TAG]


def _has_run(run_id: str) -> bool:
    """Whether this registry holds the run `run_id`, not deleted (run ids are unique across registries)."""
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


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


def _recorded_decision(version, champion: int | None, accepted: dict[str, bool]) -> Decision | None:
    """The decision an earlier attempt recorded for this version, if it was made on the same terms (the champion
    is still the one it compared with, or is this version; the same flags accepted): then the rerun finishes that
    decision instead of comparing the model with itself."""
    recorded = version.tags.get(DECISION_TAG)
    if recorded is None:
        return None
    terms = json.loads(recorded)
    decision = Decision(**{key: value for key, value in terms.items() if key in Decision.__dataclass_fields__})
    same_champion = champion in (decision.previous_champion_version, int(version.version))
    same_flags = all(terms.get(flag, False) == value for flag, value in accepted.items())
    return decision if same_champion and same_flags else None


def registered_run_of_task(experiment: str, name: str, task_id: str) -> tuple[str, str] | None:
    """(run id, model URI) of a version of `name` registered from a run that Luigi task `task_id` logged in
    `experiment` of this registry, if any: an earlier attempt's model, to register again instead of a copy."""
    client = MlflowClient()
    for run in runs_of_task(client, experiment, task_id):
        version = _version_of_run(client, name, run.info.run_id)
        if version is not None:
            return run.info.run_id, version.source
    return None


def model_in_registry(trained: dict, tracking_uri: str, experiment: str, name: str, task_id: str,
                      log_again: Callable[[], tuple[str, str]]) -> dict:
    """train.json's record of a model as it is in the registry at `tracking_uri`. When that registry lacks its run
    (a store made before it recorded its registry, or the run deleted there): the run an earlier attempt of task
    `task_id` logged and registered here, else the stored model logged again here by `log_again()` -> (run id,
    model URI). The same registry reached by another URL has the run: nothing is logged twice."""
    if _has_run(trained["run_id"]):
        return {**trained, "tracking_uri": tracking_uri}
    earlier = registered_run_of_task(experiment, name, task_id)
    if earlier:
        log.info("the %s model was logged in %s, and in %s before by run %s: registering that run", name,
                 trained["tracking_uri"], tracking_uri, earlier[0])
        run_id, model_uri = earlier
    else:
        log.warning("the %s model was logged in %s, not in %s: logging the stored model there again", name,
                    trained["tracking_uri"], tracking_uri)
        run_id, model_uri = log_again()
    return {**trained, "run_id": run_id, "model_uri": model_uri, "tracking_uri": tracking_uri}
