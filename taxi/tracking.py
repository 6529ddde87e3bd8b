"""MLflow tracking: connecting, the runs a Luigi task opens, and their links (pure: no luigi)."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager, suppress
from typing import Callable, Iterator

import mlflow
import requests
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from taxi.urls import split_credentials, tracking_identity

log = logging.getLogger(__name__)

TASK_TAG = "taxi.task_id"  # on a run: the Luigi task that logged it
STAGE_TAG = "taxi.stage"  # on a run: tuning or training
PARTIAL_DATABASE = ".creating"  # a new sqlite tracking database, until it is whole: <database>.creating


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


class TrackingRefused(TrackingUnavailable):
    """The MLflow tracking server refuses this process's credentials (its basic-auth app)."""


def connect(tracking_uri: str, experiment: str, artifact_location: str | None = None,
            verify: Callable[[str], None] | None = None) -> str:
    """Point mlflow at `tracking_uri` (failing fast and clearly if a server is down), pick the experiment and return
    the URI without credentials, the only form that is ever logged or recorded.

    Credentials in the URI (`https://user:password@host`) move to MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD.
    `artifact_location` applies to a new experiment on a local database; a server decides its own. `verify(the URI)`
    runs before the experiment is created, so that it can refuse a registry before anything is written there.
    """
    credentials = split_credentials(tracking_uri)[1]
    check_login(tracking_uri, experiment)
    tracking_uri = tracking_identity(tracking_uri)
    if credentials:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials
    server = tracking_uri.split(":", 1)[0] in ("http", "https")
    with local_registry_lock(tracking_uri):  # two processes creating one new sqlite database at once fail
        database = local_database(tracking_uri)
        if database not in (None, ":memory:"):
            create_local_database(database)
        mlflow.set_tracking_uri(tracking_uri)
        if verify:
            verify(tracking_uri)
        if mlflow.get_experiment_by_name(experiment) is None and artifact_location and not server:
            mlflow.create_experiment(experiment, artifact_location=artifact_location)
        mlflow.set_experiment(experiment)
    return tracking_uri


def check_login(tracking_uri: str, experiment: str) -> None:
    """For a tracking server, check_server with the credentials of the URI, else of the environment (MLflow's
    MLFLOW_TRACKING_USERNAME/PASSWORD); nothing for a local database."""
    credentials = split_credentials(tracking_uri)[1]
    tracking_uri = tracking_identity(tracking_uri)
    if tracking_uri.split(":", 1)[0] in ("http", "https"):
        check_server(tracking_uri, experiment, credentials or _env_credentials())


def check_server(tracking_uri: str, experiment: str, auth: tuple[str, str] | None) -> None:
    """Fail with one line saying what to do when the server at `tracking_uri` is down, refuses `auth` (its
    basic-auth app) or lets that user not read `experiment`: the first thing every process asks of it."""
    base = tracking_uri.rstrip("/")
    try:
        requests.get(f"{base}/health", timeout=5, auth=auth).raise_for_status()
        # /health answers anyone: reading the experiment is what needs a login (404: not created yet, allowed)
        reply = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name", timeout=30, auth=auth,
                             params={"experiment_name": experiment})
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {tracking_uri} is not reachable ({type(exc).__name__}); start it "
            f"(scripts/services start) or set [mlflow] tracking_uri / MLFLOW_TRACKING_URI"
        ) from None
    if reply.status_code == 401:
        given = f"refused the credentials of user {auth[0]!r}" if auth else "requires credentials"
        raise TrackingRefused(f"the MLflow server at {tracking_uri} {given}: set MLFLOW_TRACKING_USERNAME and "
                              f"MLFLOW_TRACKING_PASSWORD to the pipeline's MLflow user (docs/security.md)")
    if reply.status_code == 403:
        user = auth[0] if auth else "anonymous"
        raise TrackingRefused(f"the MLflow server at {tracking_uri} does not let user {user!r} read experiment "
                              f"{experiment!r}: grant it with scripts/mlflow-users (docs/security.md)")


@contextmanager
def task_run(task_id: str, stage: str, subject: str, tags: dict[str, str] | None = None,
             on_link: Callable[[str], None] | None = None) -> Iterator:
    """The MLflow run "{stage} {subject}" (e.g. "training green 2021-01") of a Luigi task, tagged with the task so
    that a rerun can end what a killed attempt left (end_stale_runs). Its UI page (a local database: its id) is
    logged, and a page is given to `on_link`."""
    with mlflow.start_run(run_name=f"{stage} {subject}",
                          tags={TASK_TAG: task_id, STAGE_TAG: stage, **(tags or {})}) as run:
        url = run_url(run.info.run_id)
        if url and on_link:
            on_link(url)
        log.info("%s run of %s: %s", stage, subject, url or run.info.run_id)
        yield run


def lineage_tags(stats: dict[str, dict]) -> dict[str, str]:
    """Tags saying where each month's data came from and how many rows survived cleaning."""
    tags = {}
    for key, s in stats.items():
        tags.update({f"{key}.month": s["month"], f"{key}.source_url": s["source_url"], f"{key}.sha256": s["sha256"],
                     f"{key}.rows_raw": str(s["rows_raw"]), f"{key}.rows_clean": str(s["rows_clean"])})
    return tags


def log_files(run_id: str, files: dict[str, bytes], folder: str) -> None:
    """Log files (bytes by name) as artifacts of a finished run, under `folder`."""
    with tempfile.TemporaryDirectory(prefix="taxi-artifacts-") as tmp:
        for name, content in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
        MlflowClient().log_artifacts(run_id, tmp, folder)


def run_page(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI served at `ui`."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def version_page(ui: str, name: str, version: int | str) -> str:
    """A registered model version's page in the MLflow UI served at `ui`."""
    return f"{ui}/#/models/{name}/versions/{version}"


def run_url(run_id: str) -> str | None:
    """The MLflow UI page of a run when tracking goes to a server (which serves the UI); None for a local database."""
    base = _ui_base()
    return None if base is None else run_page(base, MlflowClient().get_run(run_id).info.experiment_id, run_id)


def version_url(name: str, version: int) -> str | None:
    """The MLflow UI page of a registered model version (None for a local database)."""
    base = _ui_base()
    return None if base is None else version_page(base, name, version)


def _ui_base() -> str | None:
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def _env_credentials() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def local_database(tracking_uri: str) -> str | None:
    """The file of a sqlite tracking URI (None for a server or another database)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    return make_url(tracking_uri).database or None


def create_local_database(database: str) -> None:
    """Make a missing sqlite tracking database whole under a temporary name, then move it into place (a kill during
    MLflow's migrations leaves no half-made database); remove what a killed attempt left. Under local_registry_lock."""
    partial = f"{database}{PARTIAL_DATABASE}"
    for leftover in (partial, f"{partial}-journal"):
        with suppress(FileNotFoundError):
            os.remove(leftover)
    if os.path.exists(database):
        return
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    uri = f"sqlite:///{os.path.abspath(partial)}"
    try:
        TrackingStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)  # creates every table, as MLflow's first use does
        RegistryStore(uri)
    finally:  # each store class caches an engine per URI: drop this one's, or a later database of that name is
        for store in (TrackingStore, RegistryStore):  # read through its stale connections
            engine = store._engine_map.pop(uri, None)
            if engine is not None:
                engine.dispose()
    os.replace(partial, database)


@contextmanager
def local_registry_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock on `<database>.lock` beside a sqlite tracking database, for every process on this machine
    that uses it; a no-op for a tracking server, where the scheduler's `mlflow_registry` resource serialises."""
    database = local_database(tracking_uri)
    if database is None or database == ":memory:":
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def runs_of_task(client: MlflowClient, experiment: str, task_id: str) -> list:
    """The runs Luigi task `task_id` logged in `experiment` (none if the experiment does not exist)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], f"tags.`{TASK_TAG}` = '{task_id}'", max_results=10_000)


def end_stale_runs(experiment: str, task_id: str) -> list[str]:
    """Mark KILLED what an earlier, interrupted attempt of this Luigi task left in `experiment`: runs still RUNNING,
    and finished top-level runs that no model version uses (killed between logging and writing the task's target).
    Returns their ids."""
    client = MlflowClient()
    stale = []
    for run in runs_of_task(client, experiment, task_id):
        run_id, status = run.info.run_id, run.info.status
        orphan = (status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
                  and not client.search_model_versions(f"run_id='{run_id}'"))
        if status == "RUNNING" or orphan:
            client.set_terminated(run_id, "KILLED")
            stale.append(run_id)
    if stale:
        log.info("marked %d run(s) of an interrupted attempt of %s KILLED: %s", len(stale), task_id, ", ".join(stale))
    return stale
