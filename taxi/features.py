"""The feature sets and their matrices (pure: no luigi; part of the served model's code).

- "clock" (the default): the pickup zone, the dropoff zone and their pair as XGBoost categories, the trip distance,
  and the pickup's hour and day of the week; a dense float32 matrix, unseen zones as missing values.
- "course": the course's DictVectorizer on {PU_DO, trip_distance} records, entry for entry, built without dicts.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from taxi.columns import DISTANCE, DO, DURATION, PICKUP, PU, PU_DO

CLOCK, COURSE = "clock", "course"
FEATURE_SETS = (CLOCK, COURSE)
DEFAULT_FEATURE_SET = CLOCK
CATEGORICAL, NUMERICAL = PU_DO, DISTANCE  # the course set's two features
TARGET = DURATION
HOUR, WEEKDAY = "pickup_hour", "pickup_weekday"
CLOCK_CATEGORIES = (PU_DO, PU, DO)
CLOCK_NUMBERS = (DISTANCE, HOUR, WEEKDAY)

Matrix = sp.csr_matrix | np.ndarray

if TYPE_CHECKING:  # scikit-learn loads slowly: only the course set's fit needs it
    from sklearn.feature_extraction import DictVectorizer


class ClockEncoder:
    """The clock set's fitted encoder: the training month's zones and zone pairs, each column's categories in sorted
    order (a category's code is its position), and the raw pickup column the served model reads."""

    feature_set = CLOCK

    def __init__(self, categories: dict[str, list[str]], pickup: str):
        self.categories = categories
        self.pickup = pickup

    @property
    def feature_names_(self) -> list[str]:
        return [*CLOCK_CATEGORIES, *CLOCK_NUMBERS]

    @property
    def feature_types(self) -> list[str]:
        """XGBoost's feature types: "c" for a category, "q" for a number."""
        return ["c"] * len(CLOCK_CATEGORIES) + ["q"] * len(CLOCK_NUMBERS)

    def transform(self, trips: pd.DataFrame) -> np.ndarray:
        """The matrix of cleaned trips (zone ids as strings, PU_DO, distance, pickup time)."""
        pickup = trips[PICKUP].dt
        columns = [_codes(trips[column], self.categories[column]) for column in CLOCK_CATEGORIES]
        columns += [trips[DISTANCE].to_numpy(dtype=np.float32), pickup.hour.to_numpy(dtype=np.float32),
                    pickup.weekday.to_numpy(dtype=np.float32)]
        return np.column_stack(columns) if len(trips) else np.empty((0, len(columns)), dtype=np.float32)


def _codes(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Each value's position in `categories` as float32, NaN (XGBoost's missing value) for one not among them: a hash
    lookup in Arrow, as pandas' get_indexer would first turn every value into a Python string."""
    codes = pc.index_in(pa.array(values.astype(str)), value_set=pa.array(categories, pa.string()))
    return codes.to_numpy(zero_copy_only=False).astype(np.float32)  # nulls become NaN


def fit(feature_set: str, trips: pd.DataFrame, pickup: str) -> DictVectorizer | ClockEncoder:
    """The feature set's encoder fitted on a training month's cleaned trips; `pickup` names the raw pickup column the
    served model will read (lpep_ or tpep_pickup_datetime)."""
    if feature_set == CLOCK:
        return ClockEncoder({column: np.sort(trips[column].astype(str).unique()).tolist()
                             for column in CLOCK_CATEGORIES}, pickup)
    if feature_set == COURSE:
        return fit_vectorizer(trips)
    raise ValueError(f"unknown feature set {feature_set!r}: choose one of {', '.join(FEATURE_SETS)}")


def feature_set_of(encoder: DictVectorizer | ClockEncoder) -> str:
    return getattr(encoder, "feature_set", COURSE)


def feature_types(encoder: DictVectorizer | ClockEncoder) -> list[str] | None:
    """XGBoost's feature types of the encoder's matrices (None: all numbers)."""
    return getattr(encoder, "feature_types", None)


def columns(feature_set: str) -> list[str]:
    """The cleaned trips' columns a feature set reads, and the target."""
    used = [*CLOCK_CATEGORIES, DISTANCE, PICKUP] if feature_set == CLOCK else [CATEGORICAL, NUMERICAL]
    return [*used, TARGET]


def transform(encoder: DictVectorizer | ClockEncoder, trips: pd.DataFrame) -> Matrix:
    """The matrix of cleaned trips under a fitted encoder."""
    if isinstance(encoder, ClockEncoder):
        return encoder.transform(trips)
    return transform_course(encoder, trips)


def fit_vectorizer(df: pd.DataFrame) -> DictVectorizer:
    """A DictVectorizer fitted as `fit(df[[PU_DO, trip_distance]].to_dict('records'))` would be."""
    from sklearn.feature_extraction import DictVectorizer

    categories = np.sort(df[CATEGORICAL].unique().astype(str))
    names = [f"{CATEGORICAL}={value}" for value in categories] + [NUMERICAL]
    names.sort()  # DictVectorizer sorts feature names; 'PU_DO=…' < 'trip_distance' keeps the one-hots first
    vectorizer = DictVectorizer()
    vectorizer.feature_names_ = names
    vectorizer.vocabulary_ = {name: i for i, name in enumerate(names)}
    return vectorizer


def transform_course(vectorizer: DictVectorizer, df: pd.DataFrame) -> sp.csr_matrix:
    """`vectorizer.transform(records)` for PU_DO/trip_distance records, entry for entry, in vectorised numpy."""
    vocabulary = vectorizer.vocabulary_
    prefix = f"{CATEGORICAL}="
    names = [name[len(prefix):] for name in vectorizer.feature_names_ if name.startswith(prefix)]
    columns = np.array([vocabulary[prefix + name] for name in names], dtype=np.int32)
    # a hash lookup in Arrow: pandas' get_indexer would first turn every value into a Python string
    codes = pc.index_in(pa.array(df[CATEGORICAL].astype(str)), value_set=pa.array(names, pa.string()))
    codes = pc.fill_null(codes, -1).to_numpy()
    known = codes >= 0
    # each row holds its pair's one-hot column (when the pair was seen in training), then 'trip_distance':
    # one-hot columns sort before 'trip_distance', which is DictVectorizer's column order within a row
    indptr = np.zeros(len(df) + 1, dtype=np.int64)
    np.cumsum(known.astype(np.int64) + 1, out=indptr[1:])
    indices = np.full(indptr[-1], vocabulary[NUMERICAL], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.float64)
    data[indptr[1:] - 1] = df[NUMERICAL].to_numpy(dtype=np.float64)
    onehot = indptr[:-1][known]
    indices[onehot] = columns[codes[known]]
    data[onehot] = 1.0
    return sp.csr_matrix((data, indices, indptr), shape=(len(df), len(vocabulary)))


def dmatrix(X: Matrix, y: np.ndarray | None, nthread: int, feature_types: list[str] | None = None):
    """XGBoost's DMatrix of a matrix, its categories marked as such."""
    import xgboost as xgb  # loads slowly: only training needs a DMatrix

    return xgb.DMatrix(X, label=y, nthread=nthread, feature_types=feature_types,
                       enable_categorical=feature_types is not None)


def target(df: pd.DataFrame) -> np.ndarray:
    return df[TARGET].to_numpy(dtype=np.float64)


def save_matrix(X: Matrix, y: np.ndarray, f) -> None:
    """Write a matrix (CSR or dense) and its targets to a binary file object as one .npz."""
    if sp.issparse(X):
        np.savez(f, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape), y=y)
    else:
        np.savez(f, dense=X, y=y)


def load_matrix(f) -> tuple[Matrix, np.ndarray]:
    """Read what `save_matrix` wrote (bytes, a path, or a file object that need not be seekable)."""
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    elif hasattr(f, "read"):
        f = io.BytesIO(f.read())
    with np.load(f) as npz:
        if "dense" in npz:
            return npz["dense"], npz["y"]
        X = sp.csr_matrix((npz["data"], npz["indices"], npz["indptr"]), shape=tuple(npz["shape"]))
        return X, npz["y"]
