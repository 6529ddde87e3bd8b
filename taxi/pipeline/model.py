"""The model stages: tuning, training and registering a training month's model."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import luigi
import numpy as np
import pandas as pd

from taxi import data, layout, metrics, notify, storage
from taxi.config import MlflowConfig, TaxiConfig
from taxi.drift import DriftSettings, Measure
from taxi.pipeline.base import TrainingTask
from taxi.pipeline.prepare import BuildFeatures, CleanMonth, load_features
from taxi.promotion import HELD, Policy
from taxi.tuning import DEFAULTS, SPACES, TuningSettings

log = logging.getLogger(__name__)

POLICY, DRIFT = Policy(), DriftSettings()


@dataclass(frozen=True)
class Evidence:
    """What a champion decision and its report rest on: the gate rows and the model's predictions on them, the
    training month and the reference month it is compared with, and the drift between them."""

    gate: pd.DataFrame
    predicted: np.ndarray
    month: pd.DataFrame
    reference: pd.DataFrame | None
    reference_month: str | None
    drift: list[Measure]

    @property
    def gate_rmse(self) -> float:
        return metrics.rmse(self.gate["duration"], self.predicted)


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
            result = tuning.tune(X_train, y_train, X_valid, y_valid, self.settings(), on_trial=self._progress,
                                 trial_tags={tracking.TASK_TAG: self.task_id}, warm_start=warm["point"],
                                 course_reference=self.course_reference)
        storage.write_json({**result, "warm_start": warm, "seed": self.seed,
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
    """Registers the trained model and decides on the champion alias from evidence no step before saw: the gate
    rows of the validation month, the thresholds, the month's drift from the champion's month and the months' order
    (taxi.promotion). `--accept-drift true` promotes a month held for drift, on purpose, recorded as such."""

    # the champion decision reads the alias, scores, then moves it: one registration at a time per scheduler
    # (luigi.cfg and config/luigid.cfg set [resources] mlflow_registry = 1)
    resources = {"mlflow_registry": 1}
    min_improvement = luigi.FloatParameter(default=POLICY.min_improvement, description="relative improvement over "
                                           "the champion's gate RMSE before the alias moves")
    max_rmse = luigi.FloatParameter(default=POLICY.max_rmse, description="gate RMSE (minutes) above which a model "
                                    "is registered but never champion")
    accept_drift = luigi.BoolParameter(default=POLICY.accept_drift, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                       description="promote a month whose data drifted, on purpose")
    max_zone_distance = luigi.FloatParameter(default=DRIFT.max_zone_distance, description="L-infinity distance of "
                                             "zone frequencies above which a month is held")
    max_numeric_distance = luigi.FloatParameter(default=DRIFT.max_numeric_distance, description="Jensen-Shannon "
                                                "distance of distance and duration above which a month is held")
    min_rows_ratio = luigi.FloatParameter(default=DRIFT.min_rows_ratio, description="rows as a share of the "
                                          "reference month's below which a month is held")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy().validate()
        self.drift_settings().validate()

    def policy(self) -> Policy:
        return Policy(min_improvement=self.min_improvement, max_rmse=self.max_rmse, accept_drift=self.accept_drift)

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
        """Done when every output exists and the registration was made in the registry configured now (pointed at
        another registry, the same store registers the month there too), unless the month was held for drift and
        this run accepts the drift."""
        outputs = self.output()
        if not all(target.exists() for target in outputs.values()):
            return False
        recorded = storage.read_json(outputs[layout.REGISTRATION])
        held = recorded["decision"] == HELD and self.accept_drift
        return recorded.get("tracking_uri") == MlflowConfig().identity() and not held

    def run(self):
        from taxi import registry, tracking

        started = time.monotonic()
        tracking_uri = self.connect_tracking()
        reference = self._reference(registry.reference_month(registry.model_name(self.color)))
        if reference is not None:
            yield reference  # the reference month cleaned in this store, if it is not yet (a dynamic dependency)
        trained = self._logged_here(storage.read_json(self.input()["model"]["run"]), tracking_uri)
        evidence = self._evidence(trained, reference)
        registration = self._register(trained, evidence, tracking_uri)
        files = self._report(trained, registration, evidence, started)
        for name, content in files.items():
            storage.write_bytes(content, self.output()[name])
        tracking.log_files(registration["run_id"], files, "report")
        storage.write_json(registration, self.output()[layout.REGISTRATION])
        notify.post(notify.decision_text(registration, self.ym, self.output()[layout.REPORT].path))

    def _reference(self, month: str | None) -> CleanMonth | None:
        """The cleaned month this month's drift is measured from: the reference month (registry.reference_month),
        when it is before this one."""
        if month is None or month >= self.ym:
            return None
        year, number = map(int, month.split("-"))
        return CleanMonth(color=self.color, year=year, month=number)

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

    def _evidence(self, trained: dict, reference: CleanMonth | None) -> Evidence:
        """The gate rows with the model's predictions on them, and the drift from the reference month."""
        from taxi import drift, scoring

        valid = storage.read_parquet(self.input()["clean"]["valid"]["data"])
        gate = valid[data.gate_rows(valid, self.requires()["features"].gate_share)]
        month = storage.read_parquet(self.input()["clean"]["train"]["data"])
        before = None if reference is None else storage.read_parquet(reference.output()["data"])
        measures = [] if before is None else drift.compare(month, before, self.drift_settings())
        return Evidence(gate, scoring.predict(trained["model_uri"], gate), month, before,
                        None if reference is None else reference.ym, measures)

    def _register(self, trained: dict, evidence: Evidence, tracking_uri: str) -> dict:
        """Register the model, carry out the decision, and return registration.json's record."""
        from taxi import promotion, registry, scoring, tracking

        name = registry.model_name(self.color)
        drifted = [measure.text() for measure in evidence.drift if measure.over]
        version, decision = registry.register(
            name, trained["run_id"], trained["model_uri"], evidence.gate_rmse,
            lambda uri: scoring.version_rmse(uri, evidence.gate),
            lambda champion: promotion.decide(self.ym, evidence.gate_rmse, champion, drifted, self.policy()),
            self.accept_drift)
        url = tracking.version_url(name, version)
        if url:
            self.set_tracking_url(url)
        return {"name": name, "version": version, "run_id": trained["run_id"], "model_uri": trained["model_uri"],
                "tracking_uri": tracking_uri, "task_id": self.task_id, "month": self.ym,
                "val_rmse": trained["val_rmse"],
                "gate_rmse": evidence.gate_rmse, "gate_rows": len(evidence.gate), **asdict(decision),
                "accept_drift": self.accept_drift, "reference_month": evidence.reference_month,
                "drift": [{**asdict(measure), "over": measure.over} for measure in evidence.drift]}

    def _report(self, trained: dict, registration: dict, evidence: Evidence, started: float) -> dict[str, bytes]:
        """The report's files, from this run's records, the gate rows and the stored booster."""
        from taxi import report, serving, training

        inputs = self.input()
        booster = storage.read(inputs["model"]["booster"], serving.load_booster)
        importances = training.feature_importances(booster, storage.read_pickle(inputs["features"]["vectorizer"]))
        return report.build(self.color, registration, trained, storage.read_json(inputs["params"]),
                            self.clean_stats(), evidence.gate["duration"].to_numpy(), evidence.predicted,
                            importances, (evidence.month, evidence.reference), time.monotonic() - started)
