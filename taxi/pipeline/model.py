"""The model stages: tuning, training and registering a training month's model."""

from __future__ import annotations

import logging
import time

import luigi

from taxi import layout, notify, storage
from taxi.config import MlflowConfig, TaxiConfig
from taxi.pipeline.base import TrainingTask
from taxi.pipeline.prepare import BuildFeatures, load_features
from taxi.tuning import DEFAULTS, SPACES, TuningSettings

log = logging.getLogger(__name__)


class TuneHyperparams(TrainingTask):
    """Best XGBoost parameters from a hyperopt TPE search, warm-started from the champion's; every trial is a nested
    MLflow run. The warm start is an input recorded in best_params.json: a finished month is not tuned again when
    the champion changes. The defaults are taxi.tuning.DEFAULTS."""

    search_space = luigi.ChoiceParameter(choices=SPACES, default=DEFAULTS.space, description="the space searched")
    max_evals = luigi.IntParameter(default=DEFAULTS.max_evals, description="trials at most")
    num_boost_round = luigi.IntParameter(default=DEFAULTS.num_boost_round,
                                         description="boosting rounds at most per trial")
    early_stopping_rounds = luigi.IntParameter(default=DEFAULTS.early_stopping_rounds,
                                               description="stop a trial after this many flat rounds")
    no_progress_evals = luigi.IntParameter(default=DEFAULTS.no_progress_evals,
                                           description="stop the search after this many flat trials")
    startup_evals = luigi.IntParameter(default=DEFAULTS.startup_evals,
                                       description="random trials before TPE takes over")
    sample_rows = luigi.IntParameter(default=DEFAULTS.sample_rows, description="trials train on at most this many rows")
    prune_tolerance = luigi.FloatParameter(default=DEFAULTS.prune_tolerance,
                                           description="prune a trial this much (relative) behind the best finished "
                                                       "trial at the same round; 0: never")
    prune_after_rounds = luigi.IntParameter(default=DEFAULTS.prune_after_rounds,
                                            description="rounds every trial runs before it may be pruned")
    warm_start = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                     description="first trial: the champion's parameters, when it has some in this "
                                                 "space")
    course_reference = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                           description="also score the course's fixed parameters on the trial sample, "
                                                       "for the report")
    seed = luigi.IntParameter(default=DEFAULTS.seed)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings().validate()

    def settings(self) -> TuningSettings:
        return TuningSettings(
            nthread=TaxiConfig().nthread, space=self.search_space, max_evals=self.max_evals,
            num_boost_round=self.num_boost_round, early_stopping_rounds=self.early_stopping_rounds,
            no_progress_evals=self.no_progress_evals, startup_evals=self.startup_evals, sample_rows=self.sample_rows,
            prune_tolerance=self.prune_tolerance, prune_after_rounds=self.prune_after_rounds, seed=self.seed)

    @property
    def cache_key(self) -> str:
        """Luigi's own hash of every parameter: downstream paths carry it so new settings never reuse a model."""
        return self.task_id.rsplit("_", 1)[-1]

    def requires(self):
        return BuildFeatures(color=self.color, year=self.year, month=self.month)

    def output(self):
        return self.target(layout.tuning(self.color, self.year, self.month, self.cache_key))

    def run(self):
        import mlflow

        from taxi import registry, tracking, tuning

        started = time.monotonic()
        _, X_train, y_train, X_valid, y_valid = load_features(self.input())
        self.connect_tracking()
        champion = registry.champion_params(registry.model_name(self.color)) if self.warm_start else None
        warm = tuning.warm_start(self.search_space, champion, self.warm_start)
        log.info("tuning %s %s: %s", self.color, self.ym, warm["note"])
        with self.mlflow_run("tuning"):
            mlflow.log_params({**vars(self.settings()), "warm_start_version": warm["version"]})
            result = tuning.tune(X_train, y_train, X_valid, y_valid, self.settings(), on_trial=self._report,
                                 trial_tags={tracking.TASK_TAG: self.task_id}, warm_start=warm["point"],
                                 course_reference=self.course_reference)
        storage.write_json({**result, "warm_start": warm, "seed": self.seed,
                            "seconds": round(time.monotonic() - started, 3)}, self.output())

    def _report(self, done: int, total: int, best_rmse: float) -> None:
        self.set_progress_percentage(round(100 * done / total))
        self.set_status_message(f"trial {done} of {total}, best validation RMSE so far {best_rmse:.4f}")


class TrainModel(TrainingTask):
    """The final booster on all training rows with the best parameters, logged to MLflow as one run."""

    def requires(self):
        return {"features": BuildFeatures(color=self.color, year=self.year, month=self.month),
                "params": TuneHyperparams(color=self.color, year=self.year, month=self.month),
                "clean": self.clean_months()}

    def run_files(self) -> dict[str, str]:
        """The run folder's files: the model, its report and its registration record."""
        key = f"{layout.MODEL_VERSION}-{self.requires()['params'].cache_key}"
        return layout.run(self.color, self.year, self.month, key)

    def output(self):
        files = self.run_files()
        return {"booster": self.target(files["booster.ubj"]), "run": self.target(files["train.json"])}

    def run(self):
        from taxi import tracking, training

        started = time.monotonic()
        vectorizer, X_train, y_train, X_valid, y_valid = load_features(self.input()["features"])
        best = storage.read_json(self.input()["params"])
        tracking_uri = self.connect_tracking()
        with self.mlflow_run("training", {"color": self.color, **tracking.lineage_tags(self.clean_stats())}) as run:
            booster, scores = training.train(X_train, y_train, X_valid, y_valid, best, TaxiConfig().nthread)
            model_uri = training.log_run(booster, vectorizer, best, scores)
        storage.write_bytes(booster.save_raw("ubj"), self.output()["booster"])
        storage.write_json({"run_id": run.info.run_id, **scores, "model_uri": model_uri, "tracking_uri": tracking_uri,
                            "seconds": round(time.monotonic() - started, 3)}, self.output()["run"])


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
        files = self.requires()["model"].run_files()
        return {name: self.target(files[name]) for name in (layout.REGISTRATION, *layout.REPORT_FILES)}

    def complete(self) -> bool:
        """Done when every output exists and the registration was made in the registry configured now: pointed at
        another registry, the same store registers the month there too."""
        outputs = self.output()
        if not all(target.exists() for target in outputs.values()):
            return False
        return storage.read_json(outputs[layout.REGISTRATION]).get("tracking_uri") == MlflowConfig().identity()

    def run(self):
        from taxi import registry, scoring, tracking

        started = time.monotonic()
        tracking_uri = self.connect_tracking()
        trained = self._logged_here(storage.read_json(self.input()["model"]["run"]), tracking_uri)
        valid = storage.read_parquet(self.input()["clean"]["valid"]["data"])
        registration = registry.register(registry.model_name(self.color), trained["run_id"], trained["model_uri"],
                                         trained["val_rmse"], lambda uri: scoring.version_rmse(uri, valid))
        registration["tracking_uri"] = tracking_uri
        url = tracking.version_url(registration["name"], registration["version"])
        if url:
            self.set_tracking_url(url)
        files = self._report(trained, registration, started)
        for name, content in files.items():
            storage.write_bytes(content, self.output()[name])
        tracking.log_files(registration["run_id"], files, "report")
        storage.write_json(registration, self.output()[layout.REGISTRATION])
        if registration["decision"] == registry.CHAMPION:
            notify.post(notify.champion_text(registration, self.ym, self.output()[layout.REPORT].path))

    def _logged_here(self, trained: dict, tracking_uri: str) -> dict:
        """train.json's record of the model in this registry. TrainModel may have logged it in another (the store
        was built against it): then the run an earlier attempt of this task logged and registered here, else the
        stored booster and vectorizer logged again as a run of this task."""
        from taxi import registry, serving, tracking, training

        if trained.get("tracking_uri", tracking_uri) == tracking_uri:
            return trained
        earlier = registry.registered_run_of_task(MlflowConfig().experiment, registry.model_name(self.color),
                                                  self.task_id)
        if earlier:
            log.info("the %s %s model was logged in %s, and in %s before by run %s: registering that run", self.color,
                     self.ym, trained["tracking_uri"], tracking_uri, earlier[0])
            return {**trained, "run_id": earlier[0], "model_uri": earlier[1], "tracking_uri": tracking_uri}
        log.warning("the %s %s model was logged in %s, not in %s: logging the stored model there again", self.color,
                    self.ym, trained["tracking_uri"], tracking_uri)
        inputs = self.input()
        with self.mlflow_run("training", {"color": self.color, **tracking.lineage_tags(self.clean_stats())}) as run:
            model_uri = training.log_run(storage.read(inputs["model"]["booster"], serving.load_booster),
                                         storage.read_pickle(inputs["features"]["vectorizer"]),
                                         storage.read_json(inputs["params"]),
                                         {key: trained[key] for key in ("train_rmse", "val_rmse")})
        return {**trained, "run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": tracking_uri}

    def _report(self, trained: dict, registration: dict, started: float) -> dict[str, bytes]:
        """The report's files, from this run's records, the validation month and the stored booster."""
        from taxi import report, serving, training

        inputs = self.input()
        vectorizer, _, _, X_valid, y_valid = load_features(inputs["features"])
        booster = storage.read(inputs["model"]["booster"], serving.load_booster)
        return report.build(self.color, registration, trained, storage.read_json(inputs["params"]),
                            self.clean_stats(), y_valid, serving.predict(booster, X_valid),
                            training.feature_importances(booster, vectorizer), time.monotonic() - started)
