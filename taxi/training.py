"""Final training and the logged MLflow model (pure: no luigi)."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile

import mlflow
import numpy as np
import xgboost as xgb

from taxi import features, layout, metrics, serving
from taxi.tuning import booster_params

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# what a registered model carries of this package: the pyfunc and the features it computes, nothing else
SERVED_MODULES = ("__init__.py", "columns.py", "features.py", "serving.py", "zones.py")


def train_booster(X: features.Matrix, y: np.ndarray, params: dict, num_boost_round: int, seed: int, nthread: int,
                  feature_types: list[str] | None = None) -> xgb.Booster:
    return xgb.train(booster_params(params, seed, nthread), features.dmatrix(X, y, nthread, feature_types),
                     num_boost_round=num_boost_round)


def train(X_train: features.Matrix, y_train: np.ndarray, X_valid: features.Matrix, y_valid: np.ndarray, best: dict,
          nthread: int, feature_types: list[str] | None = None) -> tuple[xgb.Booster, dict[str, float]]:
    """The final booster with the tuned parameters on every training row, and its {train_rmse, val_rmse}."""
    booster = train_booster(X_train, y_train, best["params"], best["num_boost_round"], best["seed"], nthread,
                            feature_types)
    return booster, {"train_rmse": metrics.rmse(y_train, serving.predict(booster, X_train)),
                     "val_rmse": metrics.rmse(y_valid, serving.predict(booster, X_valid))}


def log_run(booster: xgb.Booster, encoder: serving.Encoder, best: dict, scores: dict[str, float]) -> str:
    """Log a trained model in the active run: how it was made (its parameters, the tuning's trials, the feature set,
    the code versions), its RMSEs, its categories and the pyfunc model. Returns the model URI."""
    mlflow.log_params({**best["params"], "num_boost_round": best["num_boost_round"], "seed": best["seed"],
                       "tuning_trials": best["trials"], "feature_set": features.feature_set_of(encoder),
                       "features_version": layout.FEATURES_VERSION, "model_version": layout.MODEL_VERSION})
    mlflow.log_metrics(scores)
    if isinstance(encoder, features.ClockEncoder):
        mlflow.log_dict(encoder.categories, "preprocessor/categories.json")
    else:
        mlflow.log_dict(encoder.vocabulary_, "preprocessor/vocabulary.json")
    return log_model(booster, encoder)


def log_model(booster: xgb.Booster, vectorizer: serving.Encoder) -> str:
    """Log booster + encoder as one pyfunc model in the active run, as MLflow "models from code" (served_model.py
    builds the pyfunc when the model loads: no pickled Python object), with only the serving modules of this
    package as its code; return its model URI."""
    with tempfile.TemporaryDirectory() as tmp:
        booster_path, vectorizer_path = os.path.join(tmp, "booster.ubj"), os.path.join(tmp, "vectorizer.pkl")
        booster.save_model(booster_path)
        with open(vectorizer_path, "wb") as f:
            pickle.dump(vectorizer, f)
        code = os.path.join(tmp, "code", "taxi")
        os.makedirs(code)
        for module in SERVED_MODULES:
            shutil.copyfile(os.path.join(PACKAGE_DIR, module), os.path.join(code, module))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=os.path.join(PACKAGE_DIR, "served_model.py"),
            artifacts={"booster": booster_path, "vectorizer": vectorizer_path},
            code_paths=[code],
            signature=serving.signature(vectorizer),
            input_example=serving.input_example(vectorizer),
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def feature_importances(booster: xgb.Booster, vectorizer: serving.Encoder) -> dict[str, float]:
    """Each feature's total gain in the booster, by the encoder's feature name."""
    gains = booster.get_score(importance_type="total_gain")
    return {vectorizer.feature_names_[int(k[1:])]: v for k, v in gains.items()}


def _pip_requirements() -> list[str]:
    """The project's pins for what the model needs at load time."""
    wanted = ("mlflow", "xgboost", "scikit-learn", "pandas", "numpy", "scipy", "pyarrow")
    req = os.path.join(os.path.dirname(PACKAGE_DIR), "requirements.txt")
    if not os.path.exists(req):
        return list(wanted)
    with open(req) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [pin for pin in pins if pin.split("==")[0].lower().replace("-cpu", "") in wanted]
