"""Hyperopt TPE search over the course's XGBoost space, each trial a nested MLflow run (pure: no luigi)."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)


def search_space() -> dict:
    """The course's XGBoost space (hyperopt is imported here: it loads slowly and only the search needs it)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    return {
        "max_depth": scope.int(hp.quniform("max_depth", 4, 100, 1)),
        "learning_rate": hp.loguniform("learning_rate", -3, 0),
        "reg_alpha": hp.loguniform("reg_alpha", -5, -1),
        "reg_lambda": hp.loguniform("reg_lambda", -6, -1),
        "min_child_weight": hp.loguniform("min_child_weight", -1, 3),
    }

OnTrial = Callable[[int, int, float], None]  # (trials done, max trials, best validation RMSE so far)


@dataclass(frozen=True)
class TuningSettings:
    max_evals: int
    num_boost_round: int
    early_stopping_rounds: int
    no_progress_evals: int
    startup_evals: int
    sample_rows: int
    seed: int
    nthread: int

    def validate(self) -> None:
        for name in ("max_evals", "num_boost_round", "early_stopping_rounds", "no_progress_evals",
                     "startup_evals", "sample_rows", "nthread"):
            if getattr(self, name) < 1:
                raise ValueError(f"tuning setting {name} must be at least 1, got {getattr(self, name)}")


def booster_params(params: dict, seed: int, nthread: int) -> dict:
    """Full XGBoost parameters for a point of the search space."""
    return {**params, "objective": "reg:squarederror", "tree_method": "hist", "seed": seed, "nthread": nthread}


def subsample(X: sp.csr_matrix, y: np.ndarray, rows: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A fixed random subset of `rows` training rows (all rows when there are fewer)."""
    if X.shape[0] <= rows:
        return X, y
    keep = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=rows, replace=False))
    return X[keep], y[keep]


def tune(X_train: sp.csr_matrix, y_train: np.ndarray, X_valid: sp.csr_matrix, y_valid: np.ndarray,
         settings: TuningSettings, on_trial: OnTrial | None = None, trial_tags: dict[str, str] | None = None) -> dict:
    """Run the search inside the active MLflow run; return best params, its RMSE and boosting rounds.

    Trials train on at most `sample_rows` training rows and stop early on at most `sample_rows` validation rows."""
    import mlflow
    import xgboost as xgb
    from hyperopt import STATUS_OK, Trials, fmin, tpe
    from hyperopt.early_stop import no_progress_loss

    settings.validate()
    X_fit, y_fit = subsample(X_train, y_train, settings.sample_rows, settings.seed)
    # every round scores every row of the early-stopping set: at 3 M rows that costs more than growing the tree,
    # so trials are scored on a fixed subsample of the validation month too (TrainModel scores on all of it)
    X_check, y_check = subsample(X_valid, y_valid, settings.sample_rows, settings.seed)
    train = xgb.DMatrix(X_fit, label=y_fit, nthread=settings.nthread)
    valid = xgb.DMatrix(X_check, label=y_check, nthread=settings.nthread)
    best = {"rmse": math.inf}

    def objective(point: dict) -> dict:
        params = {k: (int(v) if k == "max_depth" else float(v)) for k, v in point.items()}
        with mlflow.start_run(nested=True, run_name=f"trial-{len(trials.trials)}", tags=trial_tags):
            mlflow.log_params(params)
            booster = xgb.train(booster_params(params, settings.seed, settings.nthread), train,
                                num_boost_round=settings.num_boost_round, evals=[(valid, "validation")],
                                early_stopping_rounds=settings.early_stopping_rounds, verbose_eval=False)
            rmse = float(booster.best_score)
            rounds = booster.best_iteration + 1
            mlflow.log_metrics({"val_rmse": rmse, "best_rounds": rounds, "rounds_trained": booster.num_boosted_rounds()})
        if rmse < best["rmse"]:
            best.update(rmse=rmse, params=params, rounds=rounds)
        done = len(trials.trials)
        log.info("trial %d/%d: val_rmse %.4f (best %.4f)", done, settings.max_evals, rmse, best["rmse"])
        if on_trial:
            on_trial(done, settings.max_evals, best["rmse"])
        return {"loss": rmse, "status": STATUS_OK}

    trials = Trials()
    fmin(objective, search_space(), algo=functools.partial(tpe.suggest, n_startup_jobs=settings.startup_evals),
         max_evals=settings.max_evals, trials=trials, rstate=np.random.default_rng(settings.seed),
         early_stop_fn=no_progress_loss(settings.no_progress_evals), show_progressbar=False)
    mlflow.log_metrics({"best_val_rmse": best["rmse"], "trials": len(trials.trials)})
    return {"params": best["params"], "val_rmse": best["rmse"], "num_boost_round": best["rounds"],
            "trials": len(trials.trials), "train_rows_used": int(X_fit.shape[0]),
            "valid_rows_used": int(X_check.shape[0])}
