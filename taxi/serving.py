"""The served model: vectorizer + booster as an MLflow pyfunc that predicts trip minutes from raw trip fields
(pure: no luigi). This module, features.py, zones.py and the package's __init__ are the only code a registered model
carries (training.log_model); scoring and registration load models through MLflow, so they run exactly this code."""

from __future__ import annotations

import pickle

import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from sklearn.feature_extraction import DictVectorizer

from taxi import features, zones

INPUT_COLUMNS = ("PULocationID", "DOLocationID", "trip_distance")  # what a user gives the model
INPUT_EXAMPLE = pd.DataFrame([{"PULocationID": 43, "DOLocationID": 151, "trip_distance": 1.01}])
# zone ids as a user has them (ints, floats from a month with gaps, strings): prepare_raw applies cleaning's rule
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "PULocationID"), ColSpec(AnyType(), "DOLocationID"),
                   ColSpec("double", "trip_distance")]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1,))]))


def prepare_raw(trips: pd.DataFrame) -> pd.DataFrame:
    """Raw trip fields (zone ids as numbers or strings, distance) to the columns the vectorizer knows."""
    missing = set(INPUT_COLUMNS) - set(trips.columns)
    if missing:
        raise ValueError(f"input lacks column(s) {', '.join(sorted(missing))}")
    pu, do = zones.zone_str(trips["PULocationID"]), zones.zone_str(trips["DOLocationID"])
    return pd.DataFrame({features.CATEGORICAL: zones.pu_do(pu, do),
                         features.NUMERICAL: trips["trip_distance"].astype("float64")})


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


def load_booster(raw: bytes) -> xgb.Booster:
    """A booster from the bytes `Booster.save_raw("ubj")` gave."""
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


class TripDurationModel(mlflow.pyfunc.PythonModel):
    """Vectorizer + booster: predicts trip minutes from PULocationID, DOLocationID and trip_distance."""

    def load_context(self, context) -> None:
        with open(context.artifacts["vectorizer"], "rb") as f:
            self.vectorizer: DictVectorizer = pickle.load(f)
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts["booster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return predict(self.booster, features.transform(self.vectorizer, prepare_raw(model_input)))
