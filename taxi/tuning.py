"""Hyperopt TPE search over XGBoost parameters, each trial a nested MLflow run (pure: no luigi).

Trials that fall clearly behind the best finished trial are pruned; the search may start from the champion's
parameters (a warm start)."""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from taxi import features

log = logging.getLogger(__name__)

SPACES = ("categorical", "lossguide", "course")
INT_PARAMS = ("max_depth", "max_leaves")


def search_space(name: str) -> tuple[dict, dict]:
    """(fixed parameters, hyperopt space) of a named search space; each hyperopt label is its parameter's name.

    "categorical" (default): best-first trees for the clock feature set, whose zones and zone pairs are categories:
    a split on a pair of 10,000 categories needs many trips behind each leaf (min_child_weight) not to overfit;
    "lossguide": best-first trees bounded by leaves for the course's one-hot features, in the region where trials
    on green 2021 and 2023 converged within 200 rounds; "course": the course's depth-wise space (max_depth 4..100)."""
    from hyperopt import hp  # hyperopt loads slowly: only the search needs it
    from hyperopt.pyll import scope

    regularisation = {
        "reg_alpha": hp.loguniform("reg_alpha", -5, -1),
        "reg_lambda": hp.loguniform("reg_lambda", -6, -1),
    }
    if name == "course":
        return {"grow_policy": "depthwise"}, {
            "max_depth": scope.int(hp.quniform("max_depth", 4, 100, 1)),
            "learning_rate": hp.loguniform("learning_rate", -3, 0),
            "min_child_weight": hp.loguniform("min_child_weight", -1, 3),
            **regularisation,
        }
    if name == "lossguide":
        return {"grow_policy": "lossguide", "max_depth": 0}, {
            "max_leaves": scope.int(hp.qloguniform("max_leaves", math.log(64), math.log(256), 1)),
            "learning_rate": hp.loguniform("learning_rate", math.log(0.3), math.log(0.6)),
            "min_child_weight": hp.loguniform("min_child_weight", 0, math.log(4)),
            **regularisation,
        }
    if name == "categorical":
        return {"grow_policy": "lossguide", "max_depth": 0}, {
            "max_leaves": scope.int(hp.qloguniform("max_leaves", math.log(16), math.log(128), 1)),
            "learning_rate": hp.loguniform("learning_rate", math.log(0.2), math.log(0.6)),
            "min_child_weight": hp.loguniform("min_child_weight", math.log(10), math.log(100)),
            "reg_alpha": hp.loguniform("reg_alpha", -5, 1),
            "reg_lambda": hp.loguniform("reg_lambda", -6, 2),
        }
    raise ValueError(f"unknown search space {name!r}: choose one of {', '.join(SPACES)}")


def typed(params: dict) -> dict:
    """Parameters as XGBoost and the logs want them: integers where XGBoost wants integers, strings kept."""
    return {k: int(float(v)) if k in INT_PARAMS else v if k == "grow_policy" else float(v) for k, v in params.items()}


def warm_start(space: str, champion: tuple[int, dict] | None, enabled: bool = True,
               feature_set: str = "clock") -> dict:
    """What a search starts from, given the champion's (version, logged parameters) or None: {"version", "point",
    "note"}, the point None (and the version None) for a cold start. A champion of another feature set (its
    `feature_set` param; "course" before it was logged) or another space gives a cold start."""
    version, point = None, None
    if champion is None:
        note = "cold start: " + ("no champion" if enabled else "warm start off")
    else:
        version, params = champion
        trained_on = params.get("feature_set", "course")
        if trained_on != feature_set:
            note = f"cold start: champion v{version} was trained on the {trained_on} feature set, not {feature_set}"
        else:
            point = warm_start_point(space, params)
            note = (f"warm start: champion v{version}'s parameters" if point else
                    f"cold start: champion v{version}'s parameters are not in the {space} space")
    return {"version": version if point else None, "point": point, "note": note}


def pruned_count(history: list[dict]) -> int:
    """How many of a search's trials were pruned."""
    return sum(t["pruned_at"] is not None for t in history)


def warm_start_point(space: str, params: dict) -> dict | None:
    """The champion's parameters as a point of the space (typed, every label set), or None if they are from another
    space (other fixed parameters or labels missing)."""
    fixed, searched = search_space(space)
    params = {"grow_policy": "depthwise",  # XGBoost's default, unlogged by older champions
              **typed({k: v for k, v in params.items() if k in fixed or k in searched})}
    if any(params.get(k) != v for k, v in fixed.items()) or not set(searched) <= set(params):
        return None
    return {label: params[label] for label in searched}


OnTrial = Callable[[int, int, float], None]  # (trials done, max trials, best validation RMSE so far)


@dataclass(frozen=True)
class TuningSettings:
    """A search's budget and shape: these defaults are the pipeline's (TuneHyperparams' parameters take them;
    docs/configuration.md "Tuning defaults" says why each is what it is)."""

    nthread: int
    space: str = "categorical"
    max_evals: int = 4
    num_boost_round: int = 200
    early_stopping_rounds: int = 10
    no_progress_evals: int = 3
    startup_evals: int = 3
    sample_rows: int = 250_000
    prune_tolerance: float = 0.02  # 0: never prune
    prune_after_rounds: int = 20
    seed: int = 42

    def validate(self) -> None:
        for name in ("max_evals", "num_boost_round", "early_stopping_rounds", "no_progress_evals",
                     "startup_evals", "sample_rows", "nthread", "prune_after_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"tuning setting {name} must be at least 1, got {getattr(self, name)}")
        if self.prune_tolerance < 0:
            raise ValueError(f"tuning setting prune_tolerance must be 0 (off) or more, got {self.prune_tolerance}")
        if self.space not in SPACES:
            raise ValueError(f"tuning setting space must be one of {', '.join(SPACES)}, got {self.space!r}")


DEFAULTS = TuningSettings(nthread=1)


def booster_params(params: dict, seed: int, nthread: int) -> dict:
    """Full XGBoost parameters for a point of the search space."""
    return {**params, "objective": "reg:squarederror", "tree_method": "hist", "seed": seed, "nthread": nthread}


def subsample(X: features.Matrix, y: np.ndarray, rows: int, seed: int) -> tuple[features.Matrix, np.ndarray]:
    """A fixed random subset of `rows` training rows (all rows when there are fewer)."""
    if X.shape[0] <= rows:
        return X, y
    keep = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=rows, replace=False))
    return X[keep], y[keep]


def should_prune(rmse: float, round_: int, reference: list[float], tolerance: float, after_rounds: int) -> bool:
    """A trial at `round_` (1-based) is clearly behind when its RMSE exceeds the best finished trial's RMSE at that
    round (or at its last round, if it stopped sooner) by more than `tolerance` (relative)."""
    if tolerance <= 0 or not reference or round_ < after_rounds:
        return False
    return rmse > reference[min(round_, len(reference)) - 1] * (1 + tolerance)


def _pruner(reference: list[float], tolerance: float, after_rounds: int):
    """An XGBoost callback that stops a trial should_prune() calls behind; `pruned_at` is the round it stopped."""
    import xgboost as xgb

    class Pruner(xgb.callback.TrainingCallback):
        pruned_at: int | None = None

        def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
            if should_prune(evals_log["validation"]["rmse"][-1], epoch + 1, reference, tolerance, after_rounds):
                self.pruned_at = epoch + 1
            return self.pruned_at is not None

    return Pruner()


def month_seed(seed: int, month: str) -> int:
    """The search's seed for a training month (YYYY-MM): another month, another search; the same month, the same."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{month}".encode()).digest()[:4], "big") % (2**31 - 1)


def point_key(point: dict) -> tuple:
    """A point of a space as a comparable key, with hyperopt's vals ([value] per label) or plain values alike."""
    return tuple(sorted(typed({k: v[0] if isinstance(v, list) else v for k, v in point.items()}).items()))


def fresh_suggest(startup_evals: int, redraws: int = 100):
    """TPE's suggestion (random for the first `startup_evals` trials) drawn again, with the next seed, while it
    repeats a point the search holds already (the warm start included): every trial tries a new point."""
    from hyperopt import tpe

    def suggest(new_ids, domain, trials, seed):
        seen = {point_key(trial["misc"]["vals"]) for trial in trials.trials}
        for attempt in range(redraws):
            docs = tpe.suggest(new_ids, domain, trials, seed + attempt, n_startup_jobs=startup_evals)
            if not any(point_key(doc["misc"]["vals"]) in seen for doc in docs):
                return docs
        raise RuntimeError(f"no new point of the space in {redraws} draws: the space is exhausted")

    return suggest


def tune(X_train: features.Matrix, y_train: np.ndarray, X_valid: features.Matrix, y_valid: np.ndarray,
         settings: TuningSettings, on_trial: OnTrial | None = None, trial_tags: dict[str, str] | None = None,
         warm_start: dict | None = None, feature_types: list[str] | None = None) -> dict:
    """Run the search inside the active MLflow run; return the best params, its RMSE and rounds, and every trial.

    Trials train on at most `sample_rows` training rows and stop early on at most `sample_rows` validation rows.
    `warm_start` (a point of the space) is the first trial; no trial repeats a point."""
    import mlflow
    import xgboost as xgb
    from hyperopt import STATUS_OK, Trials, fmin
    from hyperopt.early_stop import no_progress_loss
    from hyperopt.fmin import generate_trials_to_calculate

    settings.validate()
    X_fit, y_fit = subsample(X_train, y_train, settings.sample_rows, settings.seed)
    # every round scores every row of the early-stopping set: at 3 M rows that costs more than growing the tree,
    # so trials are scored on a fixed subsample of the validation month too (TrainModel scores on all of it)
    X_check, y_check = subsample(X_valid, y_valid, settings.sample_rows, settings.seed)
    train = features.dmatrix(X_fit, y_fit, settings.nthread, feature_types)
    valid = features.dmatrix(X_check, y_check, settings.nthread, feature_types)
    fixed, space = search_space(settings.space)
    best: dict = {"rmse": math.inf, "curve": []}
    history: list[dict] = []
    started = time.monotonic()

    def objective(point: dict) -> dict:
        params = typed({**fixed, **point})
        number = len(history)
        warm = warm_start is not None and number == 0
        trial_started = time.monotonic()
        with mlflow.start_run(nested=True, run_name=f"trial-{number}", tags=trial_tags):
            mlflow.log_params(params)
            pruner = _pruner(best["curve"], settings.prune_tolerance, settings.prune_after_rounds)
            curve: dict = {}
            booster = xgb.train(booster_params(params, settings.seed, settings.nthread), train,
                                num_boost_round=settings.num_boost_round, evals=[(valid, "validation")],
                                early_stopping_rounds=settings.early_stopping_rounds, evals_result=curve,
                                callbacks=[pruner], verbose_eval=False)
            rmse, rounds, trained = float(booster.best_score), booster.best_iteration + 1, booster.num_boosted_rounds()
            del booster  # a trial's trees are not needed once scored: keep one trial's memory at a time
            gc.collect()
            mlflow.log_metrics({"val_rmse": rmse, "best_rounds": rounds, "rounds_trained": trained})
            mlflow.set_tags({"taxi.pruned": str(pruner.pruned_at is not None).lower(),
                             "taxi.warm_start": str(warm).lower()})
        seconds = time.monotonic() - trial_started
        history.append({"trial": number, "params": params, "val_rmse": rmse, "best_rounds": rounds,
                        "rounds_trained": trained, "pruned_at": pruner.pruned_at, "warm_start": warm,
                        "seconds": round(seconds, 3), "elapsed": round(time.monotonic() - started, 3)})
        if pruner.pruned_at is None and rmse < best["rmse"]:
            best.update(rmse=rmse, params=params, rounds=rounds, curve=curve["validation"]["rmse"])
        outcome = f"pruned at round {pruner.pruned_at}" if pruner.pruned_at else f"{rounds} rounds"
        log.info("trial %d/%d%s: val_rmse %.4f, %s, %.1f s (best %.4f)", number + 1, settings.max_evals,
                 " (warm start)" if warm else "", rmse, outcome, seconds, best["rmse"])
        if on_trial:
            on_trial(number + 1, settings.max_evals, best["rmse"])
        return {"loss": rmse, "status": STATUS_OK}

    no_progress = no_progress_loss(settings.no_progress_evals)

    def stop(trials_: Trials, *state) -> tuple[bool, list]:
        """No progress for a while, or the budget spent (fmin would run one more after a queued warm start)."""
        stalled, state = no_progress(trials_, *state)
        return stalled or len(history) >= settings.max_evals, state

    trials = generate_trials_to_calculate([warm_start]) if warm_start else Trials()
    fmin(objective, space, algo=fresh_suggest(settings.startup_evals), max_evals=settings.max_evals, trials=trials,
         rstate=np.random.default_rng(settings.seed), early_stop_fn=stop, show_progressbar=False)
    mlflow.log_metrics({"best_val_rmse": best["rmse"], "trials": len(history),
                        "pruned_trials": pruned_count(history)})
    return {"params": best["params"], "val_rmse": best["rmse"], "num_boost_round": best["rounds"],
            "trials": len(history), "history": history, "search_seconds": round(time.monotonic() - started, 3),
            "train_rows_used": int(X_fit.shape[0]), "valid_rows_used": int(X_check.shape[0])}
