"""What every pipeline task shares: month parameters checked before any work, targets in the store, MLflow runs
tagged with the task, and the handlers every task's events go to."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from typing import Iterator

import luigi

from taxi import data, notify, storage
from taxi.config import MlflowConfig, TaxiConfig

# mlflow, xgboost, sklearn and matplotlib take seconds to import: the modules that need them (tracking, registry,
# tuning, training, features, report) are imported inside run(), so checking a finished pipeline stays quick.


@luigi.Task.event_handler(luigi.Event.START)
def _use_private_tmp(task: luigi.Task) -> None:
    """Every temporary file of a run goes to a folder of its own, removed at exit; killed runs' folders are swept."""
    storage.use_private_tmp()


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _notify_failure(task: luigi.Task, exception: BaseException) -> None:
    """Post every failed task to the webhook of TAXI_WEBHOOK_URL, if set (docs/operations.md)."""
    notify.post(notify.failure_text(repr(task), exception))


def connect_registry(record: bool = True) -> str:
    """Point MLflow at `[mlflow]` and return the tracking URI as it is recorded; OtherRegistry, before anything is
    written there, when the store serves another registry. `record`: a store that serves none yet serves this one."""
    from taxi import store_registry

    settings = MlflowConfig()
    return store_registry.connect(TaxiConfig().store, settings.uri, settings.experiment, settings.artifact_root,
                                  record)


class MonthTask(luigi.Task):
    """A task about one month of one taxi color; parameters are checked before any work."""

    color = luigi.Parameter(default="green", description="green or yellow")
    year = luigi.IntParameter()
    month = luigi.IntParameter()
    needs_next_month = False
    version = ""  # the version of the code that makes this task's targets (layout.FEATURES_VERSION, ...)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        data.validate_month(self.color, self.year, self.month, needs_next_month=self.needs_next_month)
        TaxiConfig().validate()

    @property
    def ym(self) -> str:
        return data.ym(self.year, self.month)

    @property
    def cache_key(self) -> str:
        """What this task's targets are made from, as gokart keys its cache: a hash of its own parameters (Luigi's
        task id), its code version and the cache keys of every task it requires, after the version when it has one.
        Changing a setting anywhere upstream changes the keys, so the paths, of everything downstream."""
        upstream = sorted(task.cache_key for task in luigi.task.flatten(self.requires()))
        digest = hashlib.sha256(json.dumps([self.task_id, self.version, upstream]).encode()).hexdigest()[:10]
        return f"{self.version}-{digest}" if self.version else digest

    def target(self, relpath: str) -> luigi.Target:
        return storage.target(TaxiConfig().store, relpath)

    def targets(self, relpaths: dict[str, str]) -> dict[str, luigi.Target]:
        return {name: self.target(relpath) for name, relpath in relpaths.items()}

    def connect_tracking(self) -> str:
        """Point MLflow at the store's registry (connect_registry), end what an interrupted attempt of this task left
        open there, and return the tracking URI as it is recorded."""
        from taxi import tracking

        uri = connect_registry()
        tracking.end_stale_runs(MlflowConfig().experiment, self.task_id)
        return uri

    @contextmanager
    def mlflow_run(self, stage: str, tags: dict[str, str] | None = None) -> Iterator:
        """This task's MLflow run for `stage`; a tracking server's page of it is the task's link in luigid."""
        from taxi import tracking

        with tracking.task_run(self.task_id, stage, f"{self.color} {self.ym}", tags, self.set_tracking_url) as run:
            yield run


class TrainingTask(MonthTask):
    """A task about a training month and its validation month (the month after)."""

    needs_next_month = True

    def clean_months(self) -> dict[str, luigi.Task]:
        from taxi.pipeline.prepare import CleanMonth

        valid_year, valid_month = data.next_month(self.year, self.month)
        return {"train": CleanMonth(color=self.color, year=self.year, month=self.month),
                "valid": CleanMonth(color=self.color, year=valid_year, month=valid_month)}

    def clean_stats(self) -> dict[str, dict]:
        """The cleaning stats of the training and validation months (this task's input "clean")."""
        return {key: storage.read_json(out["stats"]) for key, out in self.input()["clean"].items()}
