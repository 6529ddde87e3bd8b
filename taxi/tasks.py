"""Luigi wiring: parameters, requires, output; each run() calls the pure functions of the taxi modules.

    luigi --module taxi.tasks RegisterModel --year 2021 --month 1 [--color green|yellow]
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

import luigi
import luigi.configuration
from tqdm import tqdm

from taxi import data, notify, report, storage
from taxi.urls import redact, tracking_identity
from taxi.tuning import SPACES, TuningSettings

# mlflow, xgboost, sklearn and matplotlib take seconds to import: the modules that need them are imported
# inside run(), so checking a finished pipeline (every target complete) stays well under 3 s.

log = logging.getLogger(__name__)


# --- what importing this module sets up for a luigi process ---

PROJECT_DEFAULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "luigi.cfg")


def _read_project_defaults() -> None:
    """Read the checkout's luigi.cfg before every other config file, whatever the working directory (Luigi itself
    reads only ./luigi.cfg, so from elsewhere a failed run would lose `[retcode]` and exit 0); TAXI_SOURCE, when
    set, overrides `[taxi] source`."""
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
            log.error("%s failed: %s: %s", failed, type(exc).__name__, exc)
        return True


def _configure_logs() -> None:
    """Print the taxi modules' INFO lines as Luigi prints its own, causes of failures first; keep MLflow to its
    warnings (no progress bars, run-link prints or INFO chatter: the taxi lines say which run each task made).
    A user's own setting of the MLflow variables wins."""
    logger = logging.getLogger("taxi")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logging.getLogger("luigi-interface").addFilter(_CauseFirst())
    for name, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"), ("MLFLOW_LOGGING_LEVEL", "WARNING")):
        os.environ.setdefault(name, value)


@luigi.Task.event_handler(luigi.Event.START)
def _use_private_tmp(task: luigi.Task) -> None:
    """Every temporary file of a run goes to a folder of its own, removed at exit; killed runs' folders are swept."""
    storage.use_private_tmp()


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _notify_failure(task: luigi.Task, exception: BaseException) -> None:
    """Post every failed task to the webhook of TAXI_WEBHOOK_URL, if set (docs/operations.md "Status and
    notifications")."""
    notify.post(notify.failure_text(repr(task), exception))


_read_project_defaults()
_configure_logs()

FEATURES_VERSION = "v1"  # bump when the features or the cleaning rules change
MODEL_VERSION = "v1"  # bump when training or the logged model changes


class TaxiConfig(luigi.Config):
    """The `[taxi]` section: where data comes from and where every target lives."""

    source = luigi.Parameter(default=data.TLC_SOURCE, description="URL template, URL prefix or folder of TLC files")
    store = luigi.Parameter(default="data", description="folder or s3://bucket/prefix for all targets")
    download_retries = luigi.IntParameter(default=4)
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
    artifact_location = luigi.Parameter(default="", description="artifact root for a new experiment (local tracking)")

    @classmethod
    def get_task_family(cls) -> str:
        return "mlflow"

    @property
    def uri(self) -> str:
        """The configured tracking URI, with any credentials."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    def identity(self) -> str:
        """The tracking URI as registration.json records it (no credentials, absolute sqlite path)."""
        return tracking_identity(self.uri)

    def connect(self) -> str:
        """Point mlflow at the tracking URI and experiment; return `identity()`."""
        from taxi import registry

        location = self.artifact_location or None
        if location and "://" not in location:
            location = os.path.abspath(location)
        return registry.connect(self.uri, self.experiment, location)

    def end_stale_runs(self, task: luigi.Task) -> None:
        """Mark KILLED the MLflow runs an interrupted earlier attempt of `task` left open or orphaned."""
        from taxi import registry

        registry.end_stale_runs(self.experiment, task.task_id)


def month_str(year: int, month: int) -> str:
    return f"{year}-{month:02d}"


class MonthTask(luigi.Task):
    """A task about one month of one taxi color; parameters are checked before any work."""

    color = luigi.Parameter(default="green", description="green or yellow")
    year = luigi.IntParameter()
    month = luigi.IntParameter()
    needs_next_month = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        data.validate_month(self.color, self.year, self.month, needs_next_month=self.needs_next_month)
        TaxiConfig().validate()

    @property
    def ym(self) -> str:
        return month_str(self.year, self.month)

    def target(self, relpath: str) -> luigi.Target:
        return storage.target(TaxiConfig().store, relpath)


class DownloadMonth(MonthTask):
    """The raw TLC parquet of one month, byte for byte, plus where it came from."""

    def output(self):
        name = data.tlc_filename(self.color, self.year, self.month)
        return {"data": self.target(f"raw/{self.color}/{name}"), "meta": self.target(f"raw/{self.color}/{name}.json")}

    def complete(self) -> bool:
        out = self.output()
        return out["meta"].exists() and storage.parquet_is_whole(out["data"])

    def run(self):
        cfg, started = TaxiConfig(), time.monotonic()
        url = data.source_url(cfg.source, self.color, self.year, self.month)
        with tempfile.TemporaryDirectory(prefix="taxi-download-") as tmp:
            path = os.path.join(tmp, os.path.basename(url))
            try:
                if storage.is_s3(url):
                    storage.fetch_s3(url, path)
                else:
                    data.fetch(url, path, retries=cfg.download_retries, backoff=cfg.retry_backoff,
                               timeout=cfg.download_timeout, progress=self._progress(url))
            except data.MonthNotPublished as exc:
                raise data.MonthNotPublished(f"{self.color} {self.ym}: {exc}") from None
            rows = data.check_raw(path, self.color, f"downloaded file {redact(url)}")
            meta = {"source_url": redact(url), "sha256": data.sha256(path), "bytes": os.path.getsize(path),
                    "rows": rows, "month": self.ym, "seconds": round(time.monotonic() - started, 3)}
            storage.put_file(path, self.output()["data"])
        storage.write_json(meta, self.output()["meta"])

    def _progress(self, url: str):
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
    """Cleaned trips of one month (duration 1..60 min, string zone ids, PU_DO) and cleaning stats."""

    max_drop_share = luigi.FloatParameter(default=0.2, significant=False,
                                          description="warn when cleaning drops more than this share of rows")

    def requires(self):
        return DownloadMonth(color=self.color, year=self.year, month=self.month)

    def output(self):
        base = f"clean/{FEATURES_VERSION}/{self.color}/{self.ym}"
        return {"data": self.target(f"{base}.parquet"), "stats": self.target(f"{base}.json")}

    def complete(self) -> bool:
        out = self.output()
        return out["stats"].exists() and storage.parquet_is_whole(out["data"])

    def run(self):
        started = time.monotonic()
        raw = self.input()["data"]
        with storage.local_copy(raw) as path:
            trips = data.read_trips(path, self.color)
        cleaned, stats = data.clean_trips(trips, self.color, what=f"{self.color} {self.ym} ({raw.path})",
                                          max_drop_share=self.max_drop_share)
        storage.write_parquet(cleaned, self.output()["data"])
        meta = storage.read_json(self.input()["meta"])
        storage.write_json({**meta, "rows_raw": stats.rows_raw, "rows_clean": stats.rows_clean,
                            "dropped_nonfinite_distance": stats.dropped_nonfinite_distance,
                            "unknown_zone_rows": stats.unknown_zone_rows,
                            "clean_seconds": round(time.monotonic() - started, 3)}, self.output()["stats"])


class TrainingTask(MonthTask):
    """A task about a training month and its validation month (the month after)."""

    needs_next_month = True

    @property
    def valid_ym(self) -> tuple[int, int]:
        return data.next_month(self.year, self.month)

    def clean_months(self) -> dict[str, CleanMonth]:
        valid_year, valid_month = self.valid_ym
        return {"train": CleanMonth(color=self.color, year=self.year, month=self.month),
                "valid": CleanMonth(color=self.color, year=valid_year, month=valid_month)}


class BuildFeatures(TrainingTask):
    """The fitted DictVectorizer and the train/validation matrices with their targets."""

    def requires(self):
        return self.clean_months()

    def output(self):
        base = f"features/{FEATURES_VERSION}/{self.color}/{self.ym}"
        return {"vectorizer": self.target(f"{base}/vectorizer.pkl"), "train": self.target(f"{base}/train.npz"),
                "valid": self.target(f"{base}/valid.npz")}

    def run(self):
        from taxi import features

        train_df = storage.read_parquet(self.input()["train"]["data"], [features.CATEGORICAL, features.NUMERICAL,
                                                                        features.TARGET])
        valid_df = storage.read_parquet(self.input()["valid"]["data"], [features.CATEGORICAL, features.NUMERICAL,
                                                                        features.TARGET])
        vectorizer = features.fit_vectorizer(train_df)
        for key, df in (("train", train_df), ("valid", valid_df)):
            with storage.open_for_write(self.output()[key]) as f:
                features.save_matrix(features.transform(vectorizer, df), features.target(df), f)
        storage.write_pickle(vectorizer, self.output()["vectorizer"])


def load_features(outputs: dict) -> tuple:
    """(vectorizer, X_train, y_train, X_valid, y_valid) from BuildFeatures' targets."""
    from taxi import features

    def load_matrix(tgt: luigi.Target) -> tuple:
        raw = storage.read_bytes(tgt)
        try:
            return features.load_matrix(raw)
        except Exception as exc:  # numpy and zipfile raise several types for a truncated or damaged .npz
            raise storage.CorruptTarget(f"cached target {tgt.path} is unreadable ({exc}); delete it and rerun to "
                                        f"rebuild it") from exc

    vectorizer = storage.read_pickle(outputs["vectorizer"])
    X_train, y_train = load_matrix(outputs["train"])
    X_valid, y_valid = load_matrix(outputs["valid"])
    return vectorizer, X_train, y_train, X_valid, y_valid


class TuneHyperparams(TrainingTask):
    """Best XGBoost parameters from a hyperopt TPE search, warm-started from the champion's; every trial is a nested
    MLflow run. The warm start is an input recorded in best_params.json: a finished month is not tuned again when
    the champion changes."""

    search_space = luigi.ChoiceParameter(choices=SPACES, default="lossguide", description="the space searched")
    max_evals = luigi.IntParameter(default=4, description="trials at most")
    num_boost_round = luigi.IntParameter(default=200, description="boosting rounds at most per trial")
    early_stopping_rounds = luigi.IntParameter(default=10, description="stop a trial after this many flat rounds")
    no_progress_evals = luigi.IntParameter(default=3, description="stop the search after this many flat trials")
    startup_evals = luigi.IntParameter(default=3, description="random trials before TPE takes over")
    sample_rows = luigi.IntParameter(default=250_000, description="trials train on at most this many rows")
    prune_tolerance = luigi.FloatParameter(default=0.02, description="prune a trial this much (relative) behind the "
                                                                     "best finished trial at the same round; 0: never")
    prune_after_rounds = luigi.IntParameter(default=20, description="rounds every trial runs before it may be pruned")
    warm_start = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                     description="first trial: the champion's parameters, when it has some in this "
                                                 "space")
    course_reference = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                           description="also score the course's fixed parameters on the trial sample, "
                                                       "for the report")
    seed = luigi.IntParameter(default=42)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings().validate()

    def settings(self) -> TuningSettings:
        return TuningSettings(
            max_evals=self.max_evals, num_boost_round=self.num_boost_round,
            early_stopping_rounds=self.early_stopping_rounds, no_progress_evals=self.no_progress_evals,
            startup_evals=self.startup_evals, sample_rows=self.sample_rows, seed=self.seed,
            nthread=TaxiConfig().nthread, space=self.search_space, prune_tolerance=self.prune_tolerance,
            prune_after_rounds=self.prune_after_rounds)

    @property
    def cache_key(self) -> str:
        """Luigi's own hash of every parameter: downstream paths carry it so new settings never reuse a model."""
        return self.task_id.rsplit("_", 1)[-1]

    def requires(self):
        return BuildFeatures(color=self.color, year=self.year, month=self.month)

    def output(self):
        return self.target(f"tuning/{self.color}/{self.ym}/{self.cache_key}/best_params.json")

    def run(self):
        import mlflow

        from taxi import registry, tuning

        started = time.monotonic()
        _, X_train, y_train, X_valid, y_valid = load_features(self.input())
        tracking = MlflowConfig()
        tracking.connect()
        tracking.end_stale_runs(self)
        champion = registry.champion_params(registry.model_name(self.color)) if self.warm_start else None
        warm = self._warm_start(champion)
        tags = run_tags(self)
        with mlflow.start_run(run_name=f"tune {self.color} {self.ym}", tags={**tags, "taxi.stage": "tuning"}) as run:
            link_run(self, run.info.run_id, "tuning")
            mlflow.log_params({**vars(self.settings()), "warm_start_version": warm["version"]})
            result = tuning.tune(X_train, y_train, X_valid, y_valid, self.settings(), on_trial=self._report,
                                 trial_tags=tags, warm_start=warm["point"], course_reference=self.course_reference)
        storage.write_json({**result, "warm_start": warm, "seed": self.seed,
                            "seconds": round(time.monotonic() - started, 3)}, self.output())

    def _warm_start(self, champion: tuple[int, dict] | None) -> dict:
        """What the search starts from: {"version", "point", "note"}; point None for a cold start."""
        from taxi import tuning

        version, point = None, None
        if champion is None:
            note = "cold start: " + ("no champion" if self.warm_start else "warm start off")
        else:
            version, params = champion
            point = tuning.warm_start_point(self.search_space, params)
            note = (f"warm start: champion v{version}'s parameters" if point else
                    f"cold start: champion v{version}'s parameters are not in the {self.search_space} space")
        log.info("tuning %s %s: %s", self.color, self.ym, note)
        return {"version": version if point else None, "point": point, "note": note}

    def _report(self, done: int, total: int, best_rmse: float) -> None:
        self.set_progress_percentage(round(100 * done / total))
        self.set_status_message(f"trial {done} of {total}, best validation RMSE so far {best_rmse:.4f}")


class TrainModel(TrainingTask):
    """The final booster on all training rows with the best parameters, logged to MLflow as one run."""

    def requires(self):
        return {"features": BuildFeatures(color=self.color, year=self.year, month=self.month),
                "params": TuneHyperparams(color=self.color, year=self.year, month=self.month),
                "clean": self.clean_months()}

    @property
    def run_dir(self) -> str:
        """The run's output folder: the model, its report and its registration record."""
        return f"runs/{self.color}/{self.ym}/{MODEL_VERSION}-{self.requires()['params'].cache_key}"

    def output(self):
        return {"booster": self.target(f"{self.run_dir}/booster.ubj"), "run": self.target(f"{self.run_dir}/train.json")}

    def run(self):
        import mlflow

        from taxi import training

        started = time.monotonic()
        vectorizer, X_train, y_train, X_valid, y_valid = load_features(self.input()["features"])
        best = storage.read_json(self.input()["params"])
        stats = {key: storage.read_json(out["stats"]) for key, out in self.input()["clean"].items()}
        tracking = MlflowConfig()
        tracking_uri = tracking.connect()
        tracking.end_stale_runs(self)
        tags = {**run_tags(self), "taxi.stage": "training", "color": self.color, **lineage_tags(stats)}
        with mlflow.start_run(run_name=f"train {self.color} {self.ym}", tags=tags) as run:  # open while training
            link_run(self, run.info.run_id, "training")
            mlflow.log_params(training_params(best))
            booster, scores = training.train_and_log(X_train, y_train, X_valid, y_valid, vectorizer, best,
                                                     TaxiConfig().nthread)
        storage.write_bytes(booster.save_raw("ubj"), self.output()["booster"])
        storage.write_json({"run_id": run.info.run_id, **scores, "tracking_uri": tracking_uri,
                            "seconds": round(time.monotonic() - started, 3)}, self.output()["run"])


def training_params(best: dict) -> dict:
    """What a training run logs about how its model was made, besides the model's own parameters."""
    return {"tuning_trials": best["trials"], "features_version": FEATURES_VERSION, "model_version": MODEL_VERSION}


def link_run(task: luigi.Task, run_id: str, what: str) -> None:
    """Name the MLflow run a task logs to, in the log and (for a tracking server) as the task's link in Luigi's
    visualiser."""
    from taxi import registry

    url = registry.run_url(run_id)
    if url:
        task.set_tracking_url(url)
    log.info("%s run of %s %s: %s", what, task.color, task.ym, url or run_id)


def run_tags(task: luigi.Task) -> dict[str, str]:
    """Tags on every MLflow run a task opens: which task made it, so a rerun can end what a killed attempt left."""
    from taxi import registry

    return {registry.TASK_TAG: task.task_id}


def lineage_tags(stats: dict[str, dict]) -> dict[str, str]:
    """Where each month's data came from and how many rows survived cleaning."""
    tags = {}
    for key, s in stats.items():
        tags.update({f"{key}.month": s["month"], f"{key}.source_url": s["source_url"], f"{key}.sha256": s["sha256"],
                     f"{key}.rows_raw": str(s["rows_raw"]), f"{key}.rows_clean": str(s["rows_clean"])})
    return tags


class RegisterModel(TrainingTask):
    """Registers the trained model; champion if it beats the current champion on the same month, else challenger."""

    # the champion decision reads the alias, scores, then moves it: one registration at a time per scheduler
    # (luigi.cfg and config/luigid.cfg set [resources] mlflow_registry = 1)
    resources = {"mlflow_registry": 1}

    def requires(self):
        """The model, and every input its report reads (so a deleted one is rebuilt, not a crash)."""
        model = TrainModel(color=self.color, year=self.year, month=self.month)
        return {"model": model, **model.requires()}

    def output(self):
        run_dir = self.requires()["model"].run_dir
        return {name: self.target(f"{run_dir}/{name}") for name in ("registration.json", *report.FILES)}

    def complete(self) -> bool:
        """Done when every output exists and the registration was made in the registry configured now: pointed at
        another registry, the same store registers the month there too."""
        outputs = self.output()
        if not all(target.exists() for target in outputs.values()):
            return False
        return storage.read_json(outputs["registration.json"]).get("tracking_uri") == MlflowConfig().identity()

    def run(self):
        import mlflow

        from taxi import registry, training

        started = time.monotonic()
        trained = storage.read_json(self.input()["model"]["run"])
        tracking = MlflowConfig()
        tracking_uri = tracking.connect()
        if trained.get("tracking_uri", tracking_uri) != tracking_uri:
            trained = self._log_again(trained, tracking_uri)
        valid_df = storage.read_parquet(self.input()["clean"]["valid"]["data"])
        fields = valid_df[["PULocationID", "DOLocationID", "trip_distance"]]  # the model takes ids of any type

        def score_version(uri: str) -> float:
            return training.rmse(valid_df["duration"], mlflow.pyfunc.load_model(uri).predict(fields))

        registration = registry.register(registry.model_name(self.color), trained["run_id"], trained["model_uri"],
                                         trained["val_rmse"], score_version)
        registration["tracking_uri"] = tracking_uri
        url = registry.version_url(registration["name"], registration["version"])
        if url:
            self.set_tracking_url(url)
        self._write_report(trained, registration, valid_df, started)
        storage.write_json(registration, self.output()["registration.json"])
        if registration["decision"] == registry.CHAMPION:
            notify.post(notify.champion_text(registration, self.ym, self.output()["report.md"].path))

    def _log_again(self, trained: dict, tracking_uri: str) -> dict:
        """TrainModel logged this model in another registry (the store was built against it): the run an earlier
        attempt of this task logged and registered here, else the stored booster and vectorizer logged again as a
        run of this task in this registry. Returns train.json's record for that run."""
        import mlflow

        from taxi import registry, training

        tracking = MlflowConfig()
        tracking.end_stale_runs(self)
        earlier = registry.registered_run_of_task(tracking.experiment, registry.model_name(self.color), self.task_id)
        if earlier:
            log.info("the %s %s model was logged in %s, and in %s before by run %s: registering that run", self.color,
                     self.ym, trained["tracking_uri"], tracking_uri, earlier[0])
            return {**trained, "run_id": earlier[0], "model_uri": earlier[1], "tracking_uri": tracking_uri}
        log.warning("the %s %s model was logged in %s, not in %s: logging the stored model there again", self.color,
                    self.ym, trained["tracking_uri"], tracking_uri)
        inputs = self.input()
        best = storage.read_json(inputs["params"])
        stats = {key: storage.read_json(out["stats"]) for key, out in inputs["clean"].items()}
        tags = {**run_tags(self), "taxi.stage": "training", "color": self.color, **lineage_tags(stats)}
        with mlflow.start_run(run_name=f"train {self.color} {self.ym}", tags=tags) as run:
            link_run(self, run.info.run_id, "training")
            mlflow.log_params(training_params(best))
            scores = {key: trained[key] for key in ("train_rmse", "val_rmse")}
            vectorizer = storage.read_pickle(inputs["features"]["vectorizer"])
            model_uri = training.log_trained(self._stored_booster(), vectorizer, best, scores)
        return {**trained, "run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": tracking_uri}

    def _stored_booster(self):
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(storage.read_bytes(self.input()["model"]["booster"]).getvalue()))
        return booster

    def _write_report(self, trained: dict, registration: dict, valid_df, started: float) -> None:
        """Markdown + plots into the run folder, and the same files logged to the MLflow run."""
        from mlflow.tracking import MlflowClient

        from taxi import training

        inputs = self.input()
        vectorizer, _, _, X_valid, y_valid = load_features(inputs["features"])
        booster = self._stored_booster()
        gains = booster.get_score(importance_type="total_gain")
        importances = {vectorizer.feature_names_[int(k[1:])]: v for k, v in gains.items()}
        best = storage.read_json(inputs["params"])
        stats = {key: storage.read_json(out["stats"]) for key, out in inputs["clean"].items()}
        summary = report.summary(self.color, registration, trained, best, stats, time.monotonic() - started)
        files = report.files(summary, y_valid, training.predict(booster, X_valid), importances)
        with tempfile.TemporaryDirectory(prefix="taxi-report-") as tmp:
            for name, content in files.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(content)
                storage.put_file(os.path.join(tmp, name), self.output()[name])
            MlflowClient().log_artifacts(registration["run_id"], tmp, "report")


# --- operations ---

# registers RangeMonthly, so `luigi --module taxi.tasks RangeMonthly --of RegisterMonth ...` finds it (scripts/backfill)
from luigi.tools.range import RangeMonthly  # noqa: E402,F401


def source_file_published(url: str) -> bool:
    """Whether `[taxi] source` has the file at `url`: HEAD for http(s), the object for s3://, else the file."""
    from taxi import schedule

    if storage.is_s3(url):
        prefix, name = url.rsplit("/", 1)
        return storage.target(prefix, name).exists()
    return schedule.source_published(url)


class SourceFile(luigi.ExternalTask):
    """One month's TLC file at `[taxi] source`: a missing dependency in Luigi's summary until it is published."""

    color = luigi.Parameter(default="green", description="green or yellow")
    year = luigi.IntParameter()
    month = luigi.IntParameter()

    def complete(self) -> bool:
        return source_file_published(data.source_url(TaxiConfig().source, self.color, self.year, self.month))


class RegisterMonth(luigi.Task):
    """RegisterModel for a training month given as one month parameter, the adapter RangeMonthly needs
    (scripts/backfill, scripts/run-monthly). It waits for both source files, so a month not published is reported
    missing rather than failing a download, then runs RegisterModel as a dynamic dependency; it is done exactly
    when that RegisterModel is done."""

    month = luigi.MonthParameter(description="training month, YYYY-MM")  # first: RangeMonthly's parameter
    color = luigi.Parameter(default="green", description="green or yellow")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        data.validate_month(self.color, self.month.year, self.month.month, needs_next_month=True)

    def register_model(self) -> RegisterModel:
        return RegisterModel(color=self.color, year=self.month.year, month=self.month.month)

    def requires(self):
        year, month = self.month.year, self.month.month
        return [SourceFile(color=self.color, year=y, month=m) for y, m in ((year, month), data.next_month(year, month))]

    def complete(self) -> bool:
        return self.register_model().complete()

    def run(self):
        yield self.register_model()
