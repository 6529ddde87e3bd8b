"""The served model: encoder + booster as an MLflow pyfunc that predicts trip minutes from raw trip fields, and its
input contract (pure: no luigi). This module, features.py, columns.py, zones.py and the package's __init__ are the
only code a registered model carries (training.log_model); scoring and registration load models through MLflow, so
they run exactly this code."""

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
from taxi.columns import DISTANCE, DO, PICKUP, PU, PU_DO

ZONE_INPUTS = (PU, DO, DISTANCE)  # what a user gives a course model; a clock model also takes the pickup time
EXAMPLE_TRIP = {PU: 43, DO: 151, DISTANCE: 1.01}
EXAMPLE_PICKUP = "2021-01-01 00:15:56"  # an ISO string; a timestamp is taken as well
TLC_TIMEZONE = "America/New_York"  # the TLC's times are this zone's wall-clock times, without an offset
Encoder = DictVectorizer | features.ClockEncoder


def input_columns(encoder: Encoder) -> tuple[str, ...]:
    """The raw trip fields a model with this encoder reads, under the TLC files' own names."""
    pickup = getattr(encoder, "pickup", None)
    return (*ZONE_INPUTS, pickup) if pickup else ZONE_INPUTS


def signature(encoder: Encoder) -> ModelSignature:
    """The model's input contract: zone ids as a user has them (ints, floats from a month with gaps, strings:
    prepare_raw applies cleaning's rule), the distance, and for a clock model the pickup time (a timestamp or an ISO
    string); one prediction per row."""
    columns = [ColSpec("double" if column == DISTANCE else AnyType(), column) for column in input_columns(encoder)]
    return ModelSignature(inputs=Schema(columns), outputs=Schema([TensorSpec(np.dtype("float32"), (-1,))]))


def input_example(encoder: Encoder) -> pd.DataFrame:
    pickup = getattr(encoder, "pickup", None)
    return pd.DataFrame([{**EXAMPLE_TRIP, pickup: EXAMPLE_PICKUP} if pickup else EXAMPLE_TRIP])


def model_input(trips: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Cleaned trips as a model's raw input `columns`: the cleaned pickup time under the TLC's own name."""
    return pd.DataFrame({column: trips[PICKUP if column.endswith(PICKUP) else column] for column in columns})


def prepare_raw(trips: pd.DataFrame, encoder: Encoder) -> pd.DataFrame:
    """Raw trip fields (zone ids as numbers or strings, distance, pickup time) to the cleaned columns the encoder
    reads; a missing column, or a row without a pickup time, is a ValueError naming the column."""
    wanted = input_columns(encoder)
    missing = [column for column in wanted if column not in trips.columns]
    if missing:
        raise ValueError(f"input lacks column(s) {', '.join(missing)}: a model of this feature set reads "
                         f"{', '.join(wanted)}")
    pu, do = zones.zone_str(trips[PU]), zones.zone_str(trips[DO])
    prepared = pd.DataFrame({PU_DO: zones.pu_do(pu, do), PU: pu, DO: do,
                             DISTANCE: trips[DISTANCE].astype("float64")})
    pickup = getattr(encoder, "pickup", None)
    if pickup:
        prepared[PICKUP] = pickup_times(trips[pickup]).to_numpy()
    return prepared


def pickup_times(values: pd.Series) -> pd.Series:
    """Pickup times from timestamps or ISO strings, as New York's wall-clock time (the TLC's): a value that is
    missing or not a time is a ValueError naming the column and the first such row."""
    times = values
    if not pd.api.types.is_datetime64_any_dtype(times):
        try:
            times = pd.to_datetime(values, errors="coerce", format="mixed")
        except ValueError:  # times with and without an offset in one column: one at a time
            times = pd.to_datetime(values.map(_wall_clock))
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert(TLC_TIMEZONE).dt.tz_localize(None)
    bad = times.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {values.name} has no pickup time in {int(bad.sum())} row(s), the first at "
                         f"position {row} ({values.iloc[row]!r}): give a timestamp or an ISO string such as "
                         f"{EXAMPLE_PICKUP!r}")
    return times


def _wall_clock(value) -> pd.Timestamp:
    """One time as New York's wall-clock time, without a zone; NaT for what is not a time."""
    time = pd.to_datetime(value, errors="coerce")
    return time.tz_convert(TLC_TIMEZONE).tz_localize(None) if not pd.isna(time) and time.tzinfo else time


def predict(booster: xgb.Booster, X: features.Matrix) -> np.ndarray:
    """Predictions straight from the matrix (no DMatrix copy). A CSR matrix's distinct rows are scored once each, in
    sorted order: the course set's rows repeat (zone pair, distance) a lot, and neighbouring rows that take the same
    paths through the trees keep those paths in cache. A dense (clock) matrix is scored as it is."""
    if not sp.issparse(X):
        return booster.inplace_predict(X)
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
    """Encoder + booster: predicts trip minutes from PULocationID, DOLocationID, trip_distance and, for the clock
    feature set, the pickup time."""

    def load_context(self, context) -> None:
        with open(context.artifacts["vectorizer"], "rb") as f:
            self.vectorizer: Encoder = pickle.load(f)
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts["booster"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return predict(self.booster, features.transform(self.vectorizer, prepare_raw(model_input, self.vectorizer)))
