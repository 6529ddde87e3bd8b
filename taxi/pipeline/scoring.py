"""The scoring stage: a cleaned month scored with a registered version of the color's model, and with whatever
version is champion.

The champion alias is resolved when ScoreMonth starts, and the version it names becomes a parameter of the
ScoreVersion task it runs (a dynamic dependency): the version is then part of that task's id and of its paths, so
a rerun is a no-op, a new champion gives a new file beside the old one, and a worker that luigid hands the task to
scores with the same version, whatever the alias says by then. ScoreMonth's own id (color, year, month) stays
stable. Resolving in `__init__` instead would cache the version in Luigi's per-process task instances, stale in a
long-lived worker once the alias moves.
"""

from __future__ import annotations

import logging
import time

import luigi
import luigi.notifications

from taxi import layout, notify, storage
from taxi.config import MlflowConfig
from taxi.pipeline.base import MonthTask, connect_registry
from taxi.pipeline.prepare import CleanMonth

log = logging.getLogger(__name__)

ALERT_SHARE = 0.2  # alert when a month's live RMSE is more than this share above the model's registered RMSE


class ScoreVersion(MonthTask):
    """The month's cleaned trips scored with one registered version of the color's model (loaded from the registry
    as users load it): the predictions with a ride id per trip, and their live error, also logged to MLflow as a
    scoring run linked to the version. A live RMSE above the registered one by more than `alert_share` is
    notified (webhook and the `[email]` receiver)."""

    model_version = luigi.IntParameter(description="the registered version of taxi-duration-{color} to score with")
    alert_share = luigi.FloatParameter(default=ALERT_SHARE, significant=False,
                                       description="alert when the live RMSE is more than this share above the "
                                                   "RMSE the version was registered with")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model_version < 1 or self.alert_share < 0:
            raise ValueError(f"model_version must be at least 1 and alert_share at least 0, got "
                             f"{self.model_version} and {self.alert_share}")

    def requires(self):
        return CleanMonth(color=self.color, year=self.year, month=self.month)

    def output(self):
        return self.targets(layout.scores(self.color, self.year, self.month, self.model_version))

    def complete(self) -> bool:
        """Done when both files exist and the scoring was made with this version in the registry configured now
        (another registry's version of the same number is another model)."""
        out = self.output()
        return (out[layout.LIVE].exists() and storage.parquet_is_whole(out[layout.PREDICTIONS])
                and storage.read_json(out[layout.LIVE])["tracking_uri"] == MlflowConfig().identity())

    def run(self):
        from taxi import scoring, tracking

        started = time.monotonic()
        tracking_uri = self.connect_tracking()
        model = scoring.model_version(self.color, self.model_version)
        trips = storage.read_parquet(self.input()["data"], list(scoring.TRIP_COLUMNS))
        tags = scoring.run_tags(self.color, model, storage.read_json(self.input()["stats"]))
        predictions, live = self.output()[layout.PREDICTIONS], self.output()[layout.LIVE]
        with self.mlflow_run("scoring", tags) as run:
            scored, record = scoring.score(model, trips, self.color, self.ym, self.alert_share)
            if live.exists():
                log.warning("%s", scoring.replacing_text(live.path, storage.read_json(live)))
            storage.write_table(scored, predictions)
        record.update(tracking_uri=tracking_uri, scoring_run_id=run.info.run_id,
                      scoring_run_url=tracking.run_url(run.info.run_id), predictions=storage.location(predictions),
                      seconds=round(time.monotonic() - started, 3))
        log.info("%s", scoring.summary(record))
        if record["alert"]:
            self._alert(record)
        storage.write_json(record, live)  # last: the scoring is complete with it

    def _alert(self, record: dict) -> None:
        """The live-error alert, to the webhook and, like Luigi's failure mails, to `[email] receiver`."""
        text = notify.live_error_text(record)
        log.warning("%s", text)
        notify.post(text)
        luigi.notifications.send_error_email(f"taxi: live error alert for {record['model_name']} "
                                             f"v{record['model_version']} on {record['color']} {record['month']}",
                                             text)


class ScoreMonth(MonthTask):
    """The month scored with the champion of the color's model: ScoreVersion of the version the champion alias
    names when this task starts. Done when the champion of the moment has scored the month."""

    def champion(self) -> int:
        """The champion's version now; NoChampion when there is none."""
        from taxi import scoring

        connect_registry(record=False)  # ScoreVersion records it, if it runs
        return scoring.champion(self.color)

    def score_version(self, version: int) -> ScoreVersion:
        return ScoreVersion(color=self.color, year=self.year, month=self.month, model_version=version)

    def complete(self) -> bool:
        """False without a champion or a reachable registry: run() then fails saying which."""
        from taxi import registry, scoring, store_registry, tracking

        try:
            version = self.champion()
        except (scoring.NoChampion, tracking.TrackingUnavailable, registry.RegistryError, store_registry.OtherRegistry):
            return False
        return self.score_version(version).complete()

    def run(self):
        scored = yield self.score_version(self.champion())
        url = storage.read_json(scored[layout.LIVE])["scoring_run_url"]
        if url:  # the scoring run's page, when MLflow is a server
            self.set_tracking_url(url)
