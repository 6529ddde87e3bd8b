"""What the operator page needs to know, read once at start: the profile's store, tracking server and luigid, its
state folder and the operator's password hash (never a password)."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from taxi import config, storage, tracking

CHECKOUT = Path(config.PROJECT_DEFAULTS).parent
HASH_ENV = "TAXI_WEB_PASSWORD_HASH"
HASH_CREDENTIAL = "password-hash"  # systemd's LoadCredential= name, in $CREDENTIALS_DIRECTORY
HASH_METHODS = ("scrypt:", "pbkdf2:")  # werkzeug.security's own
# kept from the runs' environment: the page's own secrets, and MLflow's server-side ones should they be set
PRIVATE_ENV = (HASH_ENV, "CREDENTIALS_DIRECTORY", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


class SettingsError(RuntimeError):
    """The page cannot start; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    store: str  # absolute folder or s3:// prefix
    tracking_uri: str  # as recorded: no credentials
    scheduler_url: str
    state: Path  # run records and their output, the session key
    password_hash: str
    tls_proxy: bool = False  # behind a TLS proxy: trust its X-Forwarded-* headers, cookies Secure
    visualiser_url: str = ""  # luigid's visualiser as operators' browsers reach it (the proxy); empty: scheduler_url
    client_failures: int = 5  # failed logins per client within failure_window before it must wait
    total_failures: int = 50  # failed logins of all clients within failure_window before everyone must wait
    failure_window: float = 900.0
    python: str = sys.executable
    checkout: Path = CHECKOUT
    run_env: dict[str, str] = field(default_factory=dict)  # the environment of the runs and of the form check

    @property
    def visualiser(self) -> str:
        """Where the page's links to luigid lead: the proxy's address when there is one."""
        return (self.visualiser_url or self.scheduler_url).rstrip("/")

    @property
    def luigi(self) -> str:
        return str(Path(self.python).parent / "luigi")


def password_hash(environ: dict[str, str] | None = None) -> str:
    """The operator's password hash, from TAXI_WEB_PASSWORD_HASH or the systemd credential `password-hash`."""
    environ = os.environ if environ is None else environ
    value = environ.get(HASH_ENV, "")
    if not value and environ.get("CREDENTIALS_DIRECTORY"):
        path = Path(environ["CREDENTIALS_DIRECTORY"]) / HASH_CREDENTIAL
        value = path.read_text().strip() if path.is_file() else ""
    if not value:
        raise SettingsError(f"no password hash: set {HASH_ENV}=$(.venv/bin/python -m taxi.web hash-password) "
                            f"(systemd: LoadCredential={HASH_CREDENTIAL}:FILE), see docs/web.md")
    if not value.startswith(HASH_METHODS):
        raise SettingsError(f"{HASH_ENV} is not a password hash (it must start with {' or '.join(HASH_METHODS)}): "
                            f"make one with .venv/bin/python -m taxi.web hash-password")
    return value


def secret_key(state: Path) -> bytes:
    """The key that signs session cookies: made once, kept in the state folder readable by this user only."""
    path = state / "secret-key"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def from_config(state: Path, tls_proxy: bool = False, visualiser_url: str = "") -> Settings:
    """The settings of the profile in LUIGI_CONFIG_PATH; a profile without luigid cannot start runs, so it fails."""
    config.load()
    scheduler = config.scheduler_url()
    if scheduler is None:
        raise SettingsError("the page starts runs through luigid, but [core] local_scheduler = true: use a profile "
                            "with a central scheduler, e.g. LUIGI_CONFIG_PATH=config/central.cfg")
    store = config.TaxiConfig().store
    mlflow = config.MlflowConfig()
    return Settings(store=store if storage.is_s3(store) else os.path.abspath(store),
                    tracking_uri=tracking.connect(mlflow.uri, mlflow.experiment, mlflow.artifact_root),
                    scheduler_url=scheduler.rstrip("/"), state=state, password_hash=password_hash(),
                    tls_proxy=tls_proxy, visualiser_url=visualiser_url,
                    run_env={k: v for k, v in os.environ.items() if k not in PRIVATE_ENV})
