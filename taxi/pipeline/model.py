"""The model stages: tuning, training and registering a training month's model."""

from __future__ import annotations

import logging
import time

import luigi

from taxi import layout, notify, retention, storage
from taxi.config import MlflowConfig, TaxiConfig
from taxi.drift import DriftSettings
from taxi.pipeline.base import TrainingTask
from taxi.pipeline.prepare import BuildFeatures, load_features
from taxi.promotion import HELD, Policy
from taxi.tuning import DEFAULTS, SPACES, TuningSettings, month_seed

log = logging.getLogger(__name__)

POLICY, DRIFT = Policy(), DriftSettings()


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
    seed = luigi.IntParameter(default=DEFAULTS.seed, description="with the month, the search's seed: the same month "
                                                                 "gives the same search, another month another")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings().validate()

    def settings(self) -> TuningSettings:
        return TuningSettings(
            nthread=TaxiConfig().nthread, space=self.search_space, max_evals=self.max_evals,
            num_boost_round=self.num_boost_round, early_stopping_rounds=self.early_stopping_rounds,
            no_progress_evals=self.no_progress_evals, startup_evals=self.startup_evals, sample_rows=self.sample_rows,
            prune_tolerance=self.prune_tolerance, prune_after_rounds=self.prune_after_rounds,
            seed=month_seed(self.seed, self.ym))

    def requires(self):
        return BuildFeatures(color=self.color, year=self.year, month=self.month)

    def output(self):
        return self.target(layout.tuning(self.color, self.year, self.month, self.cache_key))

    def run(self):
        import mlflow

        from taxi import registry, tracking, tuning

        started = time.monotonic()
        from taxi import features

        encoder, X_train, y_train, X_valid, y_valid = load_features(self.input())
        self.connect_tracking()
        champion = registry.champion_params(registry.model_name(self.color)) if self.warm_start else None
        warm = tuning.warm_start(self.search_space, champion, self.warm_start, self.requires().feature_set)
        log.info("tuning %s %s: %s", self.color, self.ym, warm["note"])
        with self.mlflow_run("tuning"):
            mlflow.log_params({**vars(self.settings()), "warm_start_version": warm["version"]})
            result = tuning.tune(X_train, y_train, X_valid, y_valid, self.settings(), on_trial=self._progress,
                                 trial_tags={tracking.TASK_TAG: self.task_id}, warm_start=warm["point"],
                                 feature_types=features.feature_types(encoder))
        storage.write_json({**result, "warm_start": warm, "seed": self.settings().seed,
                            "seconds": round(time.monotonic() - started, 3)}, self.output())

    def _progress(self, done: int, total: int, best_rmse: float) -> None:
        self.set_progress_percentage(round(100 * done / total))
        self.set_status_message(f"trial {done} of {total}, best validation RMSE so far {best_rmse:.4f}")


class TrainModel(TrainingTask):
    """The final booster on all training rows with the best parameters, logged to MLflow as one run."""

    version = layout.MODEL_VERSION

    def requires(self):
        return {"features": BuildFeatures(color=self.color, year=self.year, month=self.month),
                "params": TuneHyperparams(color=self.color, year=self.year, month=self.month),
                "clean": self.clean_months()}

    def run_files(self) -> dict[str, str]:
        """The run folder's files: the model, its report and its registration record."""
        return layout.run(self.color, self.year, self.month, self.cache_key)

    def output(self):
        files = self.run_files()
        return {"booster": self.target(files["booster.ubj"]), "run": self.target(files["train.json"])}

    def run(self):
        from taxi import features, tracking, training

        started = time.monotonic()
        vectorizer, X_train, y_train, X_valid, y_valid = load_features(self.input()["features"])
        best = storage.read_json(self.input()["params"])
        tracking_uri = self.connect_tracking()
        with self.mlflow_run("training", {"color": self.color, **tracking.lineage_tags(self.clean_stats())}) as run:
            booster, scores = training.train(X_train, y_train, X_valid, y_valid, best, TaxiConfig().nthread,
                                             features.feature_types(vectorizer))
            model_uri = training.log_run(booster, vectorizer, best, scores)
        storage.write_bytes(booster.save_raw("ubj"), self.output()["booster"])
        storage.write_json({"run_id": run.info.run_id, **scores, "model_uri": model_uri, "tracking_uri": tracking_uri,
                            "seconds": round(time.monotonic() - started, 3)}, self.output()["run"])


class RegisterModel(TrainingTask):
    """Registers the trained model and decides on the champion alias from evidence no step before saw: the gate
    rows of the validation month, the thresholds, the model's input contract against the champion's, the training
    month's drift from its validation month and the months' order (taxi.champion, taxi.promotion).
    `--accept-drift true` and `--accept-contract-change true` promote a held month on purpose, recorded as such."""

    # the champion decision reads the alias, scores, then moves it: one registration at a time per scheduler
    # (luigi.cfg and config/luigid.cfg set [resources] mlflow_registry = 1)
    resources = {"mlflow_registry": 1}
    min_improvement = luigi.FloatParameter(default=POLICY.min_improvement, description="relative improvement over "
                                           "the champion's gate RMSE before the alias moves")
    max_rmse = luigi.FloatParameter(default=POLICY.max_rmse, description="gate RMSE (minutes) above which a model "
                                    "is registered but never champion")
    accept_drift = luigi.BoolParameter(default=POLICY.accept_drift, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                       description="promote a month whose data drifted, on purpose")
    accept_contract_change = luigi.BoolParameter(default=POLICY.accept_contract_change,
                                                 parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                                 description="promote a model whose input columns differ from the "
                                                             "champion's, on purpose")
    max_zone_distance = luigi.FloatParameter(default=DRIFT.max_zone_distance, description="L-infinity distance of "
                                             "zone frequencies above which a month is held")
    max_numeric_distance = luigi.FloatParameter(default=DRIFT.max_numeric_distance, description="Jensen-Shannon "
                                                "distance of distance and duration above which a month is held")
    min_rows_ratio = luigi.FloatParameter(default=DRIFT.min_rows_ratio, description="rows as a share of the "
                                          "validation month's below which a month is held")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy().validate()
        self.drift_settings().validate()

    def policy(self) -> Policy:
        return Policy(min_improvement=self.min_improvement, max_rmse=self.max_rmse, accept_drift=self.accept_drift,
                      accept_contract_change=self.accept_contract_change)

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(max_zone_distance=self.max_zone_distance, max_numeric_distance=self.max_numeric_distance,
                             min_rows_ratio=self.min_rows_ratio)

    def requires(self):
        """The model, and every input its report reads (so a deleted one is rebuilt, not a crash)."""
        model = TrainModel(color=self.color, year=self.year, month=self.month)
        return {"model": model, **model.requires()}

    def output(self):
        files = self.requires()["model"].run_files()
        return {name: self.target(files[name]) for name in (layout.REGISTRATION, *layout.REPORT_FILES)}

    def complete(self) -> bool:
        """Done when every output exists and the registration was made through the tracking URI configured now (by
        another URL, run() finds the version again and rewrites the record), unless the month was held and this run
        accepts what the registration did not (drift, a contract change)."""
        outputs = self.output()
        if not all(target.exists() for target in outputs.values()):
            return False
        recorded = storage.read_json(outputs[layout.REGISTRATION])
        newly_accepted = any(value and not recorded.get(flag) for flag, value in self.policy().accepted().items())
        held = recorded["decision"] == HELD and newly_accepted
        return recorded.get("tracking_uri") == MlflowConfig().identity() and not held

    def run(self):
        from taxi import champion, registry, tracking

        started = time.monotonic()
        tracking_uri = self.connect_tracking()
        inputs = self.input()
        trained = registry.model_in_registry(storage.read_json(inputs["model"]["run"]), tracking_uri,
                                             MlflowConfig().experiment, registry.model_name(self.color),
                                             self.task_id, self._log_again)
        clean = {key: storage.read_parquet(out["data"]) for key, out in inputs["clean"].items()}
        features = self.requires()["features"]
        evidence = champion.gather(trained["model_uri"], clean["train"], clean["valid"],
                                   self.requires()["clean"]["valid"].ym, features.gate_share, self.drift_settings())
        registration = champion.register(self.color, self.ym, trained, evidence, self.policy(), self.task_id,
                                         features.feature_set)
        url = tracking.version_url(registration["name"], registration["version"])
        if url:
            self.set_tracking_url(url)
        files = self._report(trained, registration, evidence, started)
        for name, content in files.items():
            storage.write_bytes(content, self.output()[name])
        tracking.log_files(registration["run_id"], files, "report")
        # what rebuilding this version and its report takes, for scripts/gc (taxi.retention)
        needs = retention.needs([self], TaxiConfig().store)
        storage.write_json({**registration, "needs": needs}, self.output()[layout.REGISTRATION])
        notify.post(notify.decision_text(registration, self.ym, self.output()[layout.REPORT].path))

    def _log_again(self) -> tuple[str, str]:
        """The stored booster and encoder logged again as a run of this task in the registry configured now; (run
        id, model URI)."""
        from taxi import serving, tracking, training

        inputs = self.input()
        trained = storage.read_json(inputs["model"]["run"])
        with self.mlflow_run("training", {"color": self.color, **tracking.lineage_tags(self.clean_stats())}) as run:
            model_uri = training.log_run(storage.read(inputs["model"]["booster"], serving.load_booster),
                                         storage.read_pickle(inputs["features"]["vectorizer"]),
                                         storage.read_json(inputs["params"]),
                                         {key: trained[key] for key in ("train_rmse", "val_rmse")})
        return run.info.run_id, model_uri

    def _report(self, trained: dict, registration: dict, evidence, started: float) -> dict[str, bytes]:
        """The report's files, from this run's records, the gate rows and the stored booster."""
        from taxi import report, serving, training

        inputs = self.input()
        booster = storage.read(inputs["model"]["booster"], serving.load_booster)
        importances = training.feature_importances(booster, storage.read_pickle(inputs["features"]["vectorizer"]))
        return report.build(self.color, registration, trained, storage.read_json(inputs["params"]),
                            self.clean_stats(), evidence.gate["duration"].to_numpy(), evidence.predicted,
                            importances, (evidence.month, evidence.reference), time.monotonic() - started)
