"""Final training, evaluation and the MLflow model that predicts from raw trip fields (pure: no luigi)."""

from __future__ import annotations

import os
import pickle
import tempfile

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from sklearn.feature_extraction import DictVectorizer

from taxi import data, features
from taxi.tuning import booster_params

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
INPUT_EXAMPLE = pd.DataFrame([{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.01}])
# zone ids as a user has them (ints, floats from a month with gaps, strings): prepare_raw applies cleaning's rule
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "PULocationID"), ColSpec(AnyType(), "DOLocationID"),
                   ColSpec("double", "trip_distance")]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1,))]))


def train_booster(X: sp.csr_matrix, y: np.ndarray, params: dict, num_boost_round: int, seed: int,
                  nthread: int) -> xgb.Booster:
    return xgb.train(booster_params(params, seed, nthread), xgb.DMatrix(X, label=y, nthread=nthread),
                     num_boost_round=num_boost_round)


def predict(booster: xgb.Booster, X: sp.csr_matrix) -> np.ndarray:
    """Predictions straight from the CSR matrix (no DMatrix copy). Each distinct row is scored once, in sorted
    order: trips repeat (zone pair, distance) a lot, a row's prediction depends on nothing else, and neighbouring
    rows that take the same paths through the trees keep those paths in cache."""
    first, inverse = distinct_rows(X)
    return booster.inplace_predict(X[first])[inverse]


def distinct_rows(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(a row number for each distinct row, in sorted row order; every row's position in that list), so that
    X[first][inverse] equals X.

    Rows compare by their stored (column, value bits) entries, position by position up to the longest row: meant
    for matrices with a few entries per row like the pipeline's (one-hot zone pair, then distance)."""
    rows = X.shape[0]
    lengths = np.diff(X.indptr)
    row_of_entry = np.repeat(np.arange(rows), lengths)
    position = np.arange(X.nnz) - X.indptr[row_of_entry]
    keys = []
    for at in range(int(lengths.max(initial=0))):
        here = position == at
        column = np.full(rows, -1, dtype=np.int64)
        column[row_of_entry[here]] = X.indices[here]
        value = np.zeros(rows, dtype=X.data.dtype)
        value[row_of_entry[here]] = X.data[here]
        keys += [column, value]
    order = np.lexsort(keys[::-1])  # np.lexsort sorts by its last key first
    same_as_previous = np.zeros(rows, dtype=bool)
    same_as_previous[1:] = True
    for key in keys:
        in_order = key[order].view(f"i{key.itemsize}")  # compare value bits: -0.0 and 0.0 stay apart
        same_as_previous[1:] &= in_order[1:] == in_order[:-1]
    starts = ~same_as_previous
    inverse = np.empty(rows, dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return order[starts], inverse


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true, dtype=np.float64) - y_pred) ** 2)))


def prepare_raw(trips: pd.DataFrame) -> pd.DataFrame:
    """Raw trip fields (zone ids as numbers or strings, distance) to the columns the vectorizer knows."""
    missing = {"PULocationID", "DOLocationID", "trip_distance"} - set(trips.columns)
    if missing:
        raise ValueError(f"input lacks column(s) {', '.join(sorted(missing))}")
    pu, do = data.zone_str(trips["PULocationID"]), data.zone_str(trips["DOLocationID"])
    return pd.DataFrame({"PU_DO": data.pu_do(pu, do), "trip_distance": trips["trip_distance"].astype("float64")})


class TripDurationModel(mlflow.pyfunc.PythonModel):
    """Vectorizer + booster: predicts trip minutes from PULocationID, DOLocationID and trip_distance."""

    def load_context(self, context) -> None:
        with open(context.artifacts["vectorizer"], "rb") as f:
            self.vectorizer: DictVectorizer = pickle.load(f)
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts["booster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return predict(self.booster, features.transform(self.vectorizer, prepare_raw(model_input)))


def train_and_log(X_train: sp.csr_matrix, y_train: np.ndarray, X_valid: sp.csr_matrix, y_valid: np.ndarray,
                  vectorizer: DictVectorizer, best: dict, nthread: int) -> tuple[xgb.Booster, dict]:
    """Train the final booster with the tuned parameters inside the active MLflow run and log it (log_trained).
    Returns the booster and {train_rmse, val_rmse, model_uri}."""
    booster = train_booster(X_train, y_train, best["params"], best["num_boost_round"], best["seed"], nthread)
    scores = {"train_rmse": rmse(y_train, predict(booster, X_train)), "val_rmse": rmse(y_valid, predict(booster, X_valid))}
    return booster, {**scores, "model_uri": log_trained(booster, vectorizer, best, scores)}


def log_trained(booster: xgb.Booster, vectorizer: DictVectorizer, best: dict, scores: dict[str, float]) -> str:
    """Log a trained model's parameters, RMSEs, vocabulary and pyfunc model in the active run; its model URI."""
    mlflow.log_params({**best["params"], "num_boost_round": best["num_boost_round"], "seed": best["seed"]})
    mlflow.log_metrics(scores)
    mlflow.log_dict(vectorizer.vocabulary_, "preprocessor/vocabulary.json")
    return log_model(booster, vectorizer)


def log_model(booster: xgb.Booster, vectorizer: DictVectorizer) -> str:
    """Log booster + vectorizer as one pyfunc model in the active run, as MLflow "models from code" (served_model.py
    builds the pyfunc when the model loads: no pickled Python object); return its model URI."""
    with tempfile.TemporaryDirectory() as tmp:
        booster_path, vectorizer_path = os.path.join(tmp, "booster.ubj"), os.path.join(tmp, "vectorizer.pkl")
        booster.save_model(booster_path)
        with open(vectorizer_path, "wb") as f:
            pickle.dump(vectorizer, f)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=os.path.join(PACKAGE_DIR, "served_model.py"),
            artifacts={"booster": booster_path, "vectorizer": vectorizer_path},
            code_paths=[PACKAGE_DIR],
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def _pip_requirements() -> list[str]:
    """The project's pins for what the model needs at load time."""
    wanted = ("mlflow", "xgboost", "scikit-learn", "pandas", "numpy", "scipy", "pyarrow")
    req = os.path.join(os.path.dirname(PACKAGE_DIR), "requirements.txt")
    if not os.path.exists(req):
        return list(wanted)
    with open(req) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [pin for pin in pins if pin.split("==")[0].lower().replace("-cpu", "") in wanted]
