"""Feature matrices identical to DictVectorizer on {PU_DO, trip_distance} records, built without dicts (pure: no
luigi; part of the served model's code)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from sklearn.feature_extraction import DictVectorizer

CATEGORICAL, NUMERICAL = "PU_DO", "trip_distance"
TARGET = "duration"


def fit_vectorizer(df: pd.DataFrame) -> DictVectorizer:
    """A DictVectorizer fitted as `fit(df[[PU_DO, trip_distance]].to_dict('records'))` would be."""
    categories = np.sort(df[CATEGORICAL].unique().astype(str))
    names = [f"{CATEGORICAL}={value}" for value in categories] + [NUMERICAL]
    names.sort()  # DictVectorizer sorts feature names; 'PU_DO=…' < 'trip_distance' keeps the one-hots first
    vectorizer = DictVectorizer()
    vectorizer.feature_names_ = names
    vectorizer.vocabulary_ = {name: i for i, name in enumerate(names)}
    return vectorizer


def transform(vectorizer: DictVectorizer, df: pd.DataFrame) -> sp.csr_matrix:
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


def target(df: pd.DataFrame) -> np.ndarray:
    return df[TARGET].to_numpy(dtype=np.float64)


def save_matrix(X: sp.csr_matrix, y: np.ndarray, f) -> None:
    """Write a CSR matrix and its targets to a binary file object as one .npz."""
    np.savez(f, data=X.data, indices=X.indices, indptr=X.indptr, shape=np.array(X.shape), y=y)


def load_matrix(f) -> tuple[sp.csr_matrix, np.ndarray]:
    """Read what `save_matrix` wrote (bytes, a path, or a file object that need not be seekable)."""
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    elif hasattr(f, "read"):
        f = io.BytesIO(f.read())
    with np.load(f) as npz:
        X = sp.csr_matrix((npz["data"], npz["indices"], npz["indptr"]), shape=tuple(npz["shape"]))
        return X, npz["y"]
