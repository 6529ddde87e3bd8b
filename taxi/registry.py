"""MLflow tracking setup and the champion/challenger registration (pure: no luigi)."""

from __future__ import annotations

import logging
from typing import Callable
from urllib.parse import urlparse

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def model_name(color: str) -> str:
    return f"taxi-duration-{color}"


def connect(tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
    """Point mlflow at `tracking_uri` (failing fast and clearly if a server is down) and pick the experiment.

    `artifact_location` applies to a new experiment on a local database; a server decides its own.
    """
    server = urlparse(tracking_uri).scheme in ("http", "https")
    if server:
        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingUnavailable(
                f"MLflow tracking server {tracking_uri} is not reachable ({type(exc).__name__}); start it "
                f"(scripts/services start) or set [mlflow] tracking_uri / MLFLOW_TRACKING_URI"
            ) from exc
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None and artifact_location and not server:
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)


def register(name: str, run_id: str, model_uri: str, val_rmse: float,
             score_champion: Callable[[str], float]) -> dict:
    """Register the run's model (once per run), make it champion if it beats the current one, else challenger."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="NYC taxi trip duration (minutes), trained by taxi")
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    version = existing[0] if existing else mlflow.register_model(model_uri, name)
    champion_rmse = None
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and champion.version == version.version:
        decision = CHAMPION  # a rerun after a crash that followed the alias update
        champion_rmse = val_rmse
    elif champion is None:
        decision = CHAMPION
    else:
        champion_rmse = score_champion(f"models:/{name}@{CHAMPION}")
        decision = CHAMPION if val_rmse < champion_rmse else CHALLENGER
    client.set_registered_model_alias(name, decision, version.version)
    log.info("%s version %s is now %s (val_rmse %.4f, champion before: %s)", name, version.version, decision,
             val_rmse, "none" if champion is None else f"v{champion.version} {champion_rmse:.4f}")
    return {
        "name": name, "version": int(version.version), "run_id": run_id, "model_uri": model_uri,
        "val_rmse": val_rmse, "previous_champion_version": None if champion is None else int(champion.version),
        "previous_champion_val_rmse": champion_rmse, "decision": decision,
    }
