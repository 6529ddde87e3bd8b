"""`python -m taxi.mlflow_users` (scripts/mlflow-users): the users of an MLflow server that runs its basic-auth app.

As the admin, it creates the pipeline's user (or sets its password again) and gives it EDIT, no more, on the
profile's experiment and on the registered model of every color, which it creates first when missing: MLflow gives
MANAGE to whoever creates one, and the pipeline's user needs no MANAGE. Idempotent. Passwords come from the
environment only (never the command line):
  MLFLOW_AUTH_ADMIN_USERNAME (default admin), MLFLOW_AUTH_ADMIN_PASSWORD   the admin, as the server has them
  MLFLOW_TRACKING_USERNAME (default taxi), MLFLOW_TRACKING_PASSWORD        the pipeline's user, as its units have them
The server and the experiment are the profile's `[mlflow]` (LUIGI_CONFIG_PATH).
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

from taxi import config, data

PIPELINE_PERMISSION = "EDIT"  # runs, model versions, their tags and aliases; MANAGE would also delete and grant
EXPERIMENT, REGISTERED_MODEL = "experiment", "registered_model"  # MLflow's resource types of a grant
USER_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # what MLflow's clients log in with


class Login(NamedTuple):
    user: str
    password: str


class UsersError(RuntimeError):
    """A missing setting or a refusal of the server, said in one line."""


@contextmanager
def logged_in_as(login: Login) -> Iterator[None]:
    """MLflow's clients (which read USER_VARIABLES at each request) log in as `login` inside the block."""
    saved = {name: os.environ.get(name) for name in USER_VARIABLES}
    os.environ.update(zip(USER_VARIABLES, login))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_users(tracking_uri: str, admin: Login, pipeline: Login, experiment: str, models: Sequence[str]) -> list[str]:
    """Make `pipeline` a user of the server with PIPELINE_PERMISSION on `experiment` and `models` (created as the
    admin when missing); returns what was done, one line each."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():  # importing mlflow.server warns about Starlette's WSGI middleware
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient  # what get_app_client("basic-auth", ...) returns

    done = []
    with logged_in_as(admin):
        users = AuthServiceClient(tracking_uri)
        client = MlflowClient(tracking_uri)
        try:
            try:
                user = users.get_user(pipeline.user)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                users.create_user(pipeline.user, pipeline.password)
                done.append(f"user {pipeline.user}: created")
            else:
                users.update_user_password(pipeline.user, pipeline.password)
                done.append(f"user {pipeline.user}: password set")
                if user.is_admin:
                    users.update_user_admin(pipeline.user, False)
                    done.append(f"user {pipeline.user}: no longer an admin")
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            grant(users, pipeline.user, EXPERIMENT, experiment_id)
            done.append(f"experiment {experiment} (id {experiment_id}): {PIPELINE_PERMISSION} for {pipeline.user}")
            for name in models:
                try:
                    client.get_registered_model(name)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    client.create_registered_model(name, description="NYC taxi trip duration (minutes), trained "
                                                                      "by taxi")
                grant(users, pipeline.user, REGISTERED_MODEL, name)
                done.append(f"registered model {name}: {PIPELINE_PERMISSION} for {pipeline.user}")
        except MlflowException as exc:
            if "error code 401" in exc.message:
                raise UsersError(f"the MLflow server at {tracking_uri} refused the credentials of {admin.user!r}: "
                                 f"set MLFLOW_AUTH_ADMIN_USERNAME and MLFLOW_AUTH_ADMIN_PASSWORD to its admin's "
                                 f"(/etc/taxi/mlflow.env)") from None
            raise UsersError(f"the MLflow server at {tracking_uri} answered {exc.error_code}: "
                             f"{exc.message.splitlines()[0]}") from None
    return done


def grant(users, user: str, resource_type: str, resource_id: str) -> None:
    """Give `user` exactly PIPELINE_PERMISSION on the resource, whatever it had (MANAGE, when it created it)."""
    from mlflow.exceptions import MlflowException

    try:
        users.grant_user_permission(user, resource_type, resource_id, PIPELINE_PERMISSION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if users.get_user_permission(user, resource_type, resource_id).permission != PIPELINE_PERMISSION:
            users.revoke_user_permission(user, resource_type, resource_id)
            users.grant_user_permission(user, resource_type, resource_id, PIPELINE_PERMISSION)


def login_from_env(user_variable: str, default_user: str, password_variable: str) -> Login:
    password = os.environ.get(password_variable)
    if not password:
        raise UsersError(f"set {password_variable} (and {user_variable} unless it is {default_user!r}) in the "
                         f"environment, never on the command line (docs/security.md)")
    return Login(os.environ.get(user_variable) or default_user, password)


def main() -> None:
    from taxi.registry import model_name
    from taxi.urls import tracking_identity

    config.load()
    settings = config.MlflowConfig()
    tracking_uri = tracking_identity(settings.uri)
    try:
        if not tracking_uri.startswith(("http://", "https://")):
            raise UsersError(f"[mlflow] tracking_uri is {tracking_uri}: users exist only on an MLflow server; set "
                             f"LUIGI_CONFIG_PATH to the profile of one (config/server.cfg, config/cluster.cfg)")
        admin = login_from_env("MLFLOW_AUTH_ADMIN_USERNAME", "admin", "MLFLOW_AUTH_ADMIN_PASSWORD")
        pipeline = login_from_env("MLFLOW_TRACKING_USERNAME", "taxi", "MLFLOW_TRACKING_PASSWORD")
        done = ensure_users(tracking_uri, admin, pipeline, settings.experiment,
                            [model_name(color) for color in data.COLORS])
    except UsersError as exc:
        print(f"mlflow-users: {exc}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(f"{tracking_uri}: {line}" for line in done))


if __name__ == "__main__":
    main()
