"""The data stages: a month's raw file, its cleaned trips, and the feature matrices of a training month."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import luigi
from tqdm import tqdm

from taxi import checks, data, layout, source, storage
from taxi.checks import CheckSettings
from taxi.columns import pickup_column
from taxi.features import DEFAULT_FEATURE_SET, FEATURE_SETS
from taxi.config import TaxiConfig
from taxi.pipeline.base import MonthTask, TrainingTask
from taxi.urls import redact

CHECKS = CheckSettings()


class DownloadMonth(MonthTask):
    """The raw TLC parquet of one month, byte for byte, plus where it came from."""

    def output(self):
        return self.targets(layout.raw(self.color, self.year, self.month))

    def complete(self) -> bool:
        out = self.output()
        return out["meta"].exists() and storage.parquet_is_whole(out["data"])

    def run(self):
        cfg, started = TaxiConfig(), time.monotonic()
        url = data.source_url(cfg.source, self.color, self.year, self.month)
        with tempfile.TemporaryDirectory(prefix="taxi-download-") as tmp:
            path = os.path.join(tmp, os.path.basename(url))
            try:
                source.fetch(url, path, retries=cfg.download_retries, backoff=cfg.retry_backoff,
                             timeout=cfg.download_timeout, progress=self._progress(url))
            except source.MonthNotPublished as exc:
                raise source.MonthNotPublished(f"{self.color} {self.ym}: {exc}") from None
            rows = data.check_raw(path, self.color, f"downloaded file {redact(url)}")
            meta = {"source_url": redact(url), "sha256": data.sha256(path), "bytes": os.path.getsize(path),
                    "rows": rows, "month": self.ym, "seconds": round(time.monotonic() - started, 3)}
            storage.put_file(path, self.output()["data"])
        storage.write_json(meta, self.output()["meta"])

    def _progress(self, url: str) -> source.Progress:
        """A tqdm bar on a terminal, else a Luigi status message every 10%."""
        url = redact(url)
        if sys.stderr.isatty():
            bar = tqdm(desc=data.tlc_filename(self.color, self.year, self.month), unit="B", unit_scale=True)

            def show(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)
            return show
        reported = [-1]

        def report_status(done: int, total: int | None) -> None:
            if total and (tenth := 10 * done // total) > reported[0]:
                reported[0] = tenth
                self.set_status_message(f"downloading {url}: {done:,} of {total:,} bytes")
                self.set_progress_percentage(10 * tenth)
        return report_status


class CleanMonth(MonthTask):
    """Cleaned trips of one month (duration 1..60 min, string zone ids, PU_DO, pickup time) that passed the data
    checks (taxi.checks), and the cleaning stats with each check's failing share. A month that fails a check stops
    here: nothing is written and nothing downstream runs."""

    version = layout.FEATURES_VERSION
    max_failing_share = luigi.FloatParameter(default=CHECKS.max_failing_share,
                                             description="a check fails when more than this share of rows fail it")
    max_drop_share = luigi.FloatParameter(default=CHECKS.max_drop_share,
                                          description="fail when cleaning drops more than this share of rows")
    max_distance = luigi.FloatParameter(default=CHECKS.max_distance, description="the longest plausible trip, miles")
    pickup_slack_days = luigi.FloatParameter(default=CHECKS.pickup_slack_days,
                                             description="pickups this long outside the month still count as in it")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_settings().validate()

    def check_settings(self) -> CheckSettings:
        return CheckSettings(max_failing_share=self.max_failing_share, max_drop_share=self.max_drop_share,
                             max_distance=self.max_distance, pickup_slack_days=self.pickup_slack_days)

    def requires(self):
        return DownloadMonth(color=self.color, year=self.year, month=self.month)

    def output(self):
        return self.targets(layout.clean(self.color, self.year, self.month, self.cache_key))

    def complete(self) -> bool:
        out = self.output()
        return out["stats"].exists() and storage.parquet_is_whole(out["data"])

    def run(self):
        started = time.monotonic()
        raw = self.input()["data"]
        with storage.local_copy(raw) as path:
            trips = data.read_trips(path, self.color)
        what = f"{self.color} {self.ym} ({raw.path})"
        cleaned, stats = data.clean_trips(trips, self.color, what=what)
        findings = checks.check_month(cleaned, stats, self.year, self.month, self.check_settings(), what)
        storage.write_parquet(cleaned, self.output()["data"])
        storage.write_json({**storage.read_json(self.input()["meta"]), **stats.record(),
                            "checks": {finding.check: finding.share for finding in findings},
                            "clean_seconds": round(time.monotonic() - started, 3)}, self.output()["stats"])


class BuildFeatures(TrainingTask):
    """The fitted encoder of the feature set, the training matrix and the validation month's selection rows as a
    matrix (its gate rows, taxi.data.gate_rows, are left for RegisterModel: no tuning or training step reads them)."""

    version = layout.FEATURES_VERSION
    feature_set = luigi.ChoiceParameter(choices=FEATURE_SETS, default=DEFAULT_FEATURE_SET,
                                        description="clock: zones, their pair, distance, pickup hour and weekday; "
                                                    "course: the course's PU_DO and distance")
    gate_share = luigi.FloatParameter(default=0.5, description="the share of the validation month's trips kept "
                                                               "for the champion decision")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 < self.gate_share < 1:
            raise ValueError(f"[BuildFeatures] gate_share must be above 0 and below 1, got {self.gate_share}")

    def requires(self):
        return self.clean_months()

    def output(self):
        return self.targets(layout.features(self.color, self.year, self.month, self.cache_key))

    def run(self):
        from taxi import features

        columns = features.columns(self.feature_set)
        train = storage.read_parquet(self.input()["train"]["data"], columns)
        valid = storage.read_parquet(self.input()["valid"]["data"], list(dict.fromkeys(columns + [*data.TRIP_FIELDS])))
        months = {"train": train, "valid": valid[~data.gate_rows(valid, self.gate_share)]}
        encoder = features.fit(self.feature_set, months["train"], pickup_column(self.color))
        for key, df in months.items():
            with storage.open_for_write(self.output()[key]) as f:
                features.save_matrix(features.transform(encoder, df), features.target(df), f)
        storage.write_pickle(encoder, self.output()["vectorizer"])


def load_features(outputs: dict[str, luigi.Target]) -> tuple:
    """(vectorizer, X_train, y_train, X_valid, y_valid) from BuildFeatures' targets."""
    from taxi import features

    X_train, y_train = storage.read(outputs["train"], features.load_matrix)
    X_valid, y_valid = storage.read(outputs["valid"], features.load_matrix)
    return storage.read_pickle(outputs["vectorizer"]), X_train, y_train, X_valid, y_valid
