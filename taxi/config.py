"""The project's settings: the `[taxi]` and `[mlflow]` sections, and how a process reads the checkout's luigi.cfg.

Nothing happens on import: an entry point calls `load()` (taxi.tasks does, for every `luigi --module taxi.tasks`
process) before it builds a task. Every setting's default is in code; luigi.cfg and the profiles only override.
"""

from __future__ import annotations

import logging
import os
import warnings

import luigi
import luigi.configuration
import luigi.interface
import luigi.parameter

from taxi.data import TLC_SOURCE
from taxi.urls import tracking_identity

PROJECT_DEFAULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "luigi.cfg")


def load() -> None:
    """Read the checkout's luigi.cfg before every other config file, whatever the working directory (Luigi itself
    reads only ./luigi.cfg, so from elsewhere a failed run would lose `[retcode]` and exit 0); TAXI_SOURCE, when
    set, overrides `[taxi] source`. Idempotent."""
    paths = luigi.configuration.LuigiConfigParser._config_paths
    if PROJECT_DEFAULTS not in paths:
        paths.insert(0, PROJECT_DEFAULTS)  # lowest precedence: ./luigi.cfg and LUIGI_CONFIG_PATH still override
        luigi.configuration.LuigiConfigParser.reload()
    if os.environ.get("TAXI_SOURCE"):
        luigi.configuration.get_config().set("taxi", "source", os.environ["TAXI_SOURCE"])


class _CauseFirst(logging.Filter):
    """Luigi logs a failure as a line naming the task, then a traceback that ends with the cause: log the cause
    (the exception's message, which says what to do) first."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            failed = record.args[-1] if str(record.msg).startswith("[pid %s] Worker %s failed") else "luigi"
            logging.getLogger("taxi.tasks").error("%s failed: %s: %s", failed, type(exc).__name__, exc)
        return True


def configure_logging() -> None:
    """Print the taxi modules' INFO lines as Luigi prints its own, causes of failures first; keep MLflow to its
    warnings (no progress bars, run-link prints or INFO chatter: the taxi lines say which run each task made).
    A user's own setting of the MLflow variables wins. Idempotent."""
    logger = logging.getLogger("taxi")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    interface = logging.getLogger("luigi-interface")
    if not any(isinstance(f, _CauseFirst) for f in interface.filters):
        interface.addFilter(_CauseFirst())
    for name, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"), ("MLFLOW_LOGGING_LEVEL", "WARNING")):
        os.environ.setdefault(name, value)


def scheduler_url() -> str | None:
    """luigid's URL as Luigi computes it from the profile, or None when runs use a local scheduler."""
    with warnings.catch_warnings():  # other [core] settings (rpc-retry-wait...) are read by Luigi's client, not here
        warnings.simplefilter("ignore", luigi.parameter.UnconsumedParameterWarning)
        core = luigi.interface.core()
    if core.local_scheduler:
        return None
    return core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"


class TaxiConfig(luigi.Config):
    """The `[taxi]` section: where data comes from and where every target lives."""

    source = luigi.Parameter(default=TLC_SOURCE, description="URL template, URL prefix, s3:// prefix or folder of "
                                                             "TLC files")
    store = luigi.Parameter(default="data", description="folder or s3://bucket/prefix for all targets")
    download_retries = luigi.IntParameter(default=4, description="retries of a transient download failure")
    download_timeout = luigi.FloatParameter(default=30.0, description="seconds without data before a retry")
    retry_backoff = luigi.FloatParameter(default=2.0, description="first retry delay in seconds, doubled each time")
    threads = luigi.IntParameter(default=0, description="XGBoost threads; 0 means all cores")

    @classmethod
    def get_task_family(cls) -> str:
        return "taxi"

    @property
    def nthread(self) -> int:
        return self.threads or os.cpu_count() or 1

    def validate(self) -> None:
        """Reject settings that would fail later in a misleading way (a negative retry count reads as 'no file')."""
        for name, value, least in (("download_retries", self.download_retries, 0), ("threads", self.threads, 0),
                                   ("retry_backoff", self.retry_backoff, 0)):
            if value < least:
                raise ValueError(f"[taxi] {name} must be at least {least}, got {value}")
        if self.download_timeout <= 0:
            raise ValueError(f"[taxi] download_timeout must be more than 0 seconds, got {self.download_timeout}")


class MlflowConfig(luigi.Config):
    """The `[mlflow]` section: tracking server (or local sqlite file) and experiment."""

    tracking_uri = luigi.Parameter(default="", description="empty: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment = luigi.Parameter(default="taxi-duration")
    artifact_location = luigi.Parameter(default="mlartifacts", description="artifact root of a new experiment in a "
                                                                           "local database (a server decides its own)")

    @classmethod
    def get_task_family(cls) -> str:
        return "mlflow"

    @property
    def uri(self) -> str:
        """The configured tracking URI, with any credentials."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    @property
    def artifact_root(self) -> str | None:
        """`artifact_location` with a relative folder made absolute (None when empty)."""
        location = self.artifact_location or None
        return os.path.abspath(location) if location and "://" not in location else location

    def identity(self) -> str:
        """The tracking URI as registration.json records it (no credentials, absolute sqlite path)."""
        return tracking_identity(self.uri)
