"""The course's baseline in one place (MLOps Zoomcamp, duration prediction): its own code path, as the notebook runs
it, and its batch scoring (score.py), cut into the stages the benchmarks time, and its fixed XGBoost parameters as
the benchmarks train with them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xgboost as xgb
from sklearn.feature_extraction import DictVectorizer
from sklearn.metrics import root_mean_squared_error

# The course's fixed XGBoost parameters, rounds and seed (MLOps Zoomcamp, duration prediction): the baseline every
# benchmark compares with.
COURSE_PARAMS = {
    "learning_rate": 0.09585355369315604,
    "max_depth": 30,
    "min_child_weight": 1.060597050922164,
    "reg_alpha": 0.018060244040060163,
    "reg_lambda": 0.011658731377413597,
}
COURSE_ROUNDS = 100
COURSE_SEED = 42
# As the notebook passes them to xgb.train.
COURSE_NOTEBOOK_PARAMS = {**COURSE_PARAMS, "objective": "reg:squarederror", "seed": COURSE_SEED}
FEATURE_COLUMNS = ["PU_DO", "trip_distance"]


def course_read(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def course_duration(df: pd.DataFrame) -> pd.DataFrame:
    df["duration"] = df.lpep_dropoff_datetime - df.lpep_pickup_datetime
    df.duration = df.duration.apply(lambda td: td.total_seconds() / 60)
    return df


def course_filter(df: pd.DataFrame) -> pd.DataFrame:
    df = df[(df.duration >= 1) & (df.duration <= 60)]
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


def course_read_dataframe(path: str) -> pd.DataFrame:
    """The notebook's read_dataframe: read, duration, filter."""
    return course_filter(course_duration(course_read(path)))


def course_dicts(df: pd.DataFrame) -> list[dict]:
    return df[FEATURE_COLUMNS].to_dict(orient="records")


def course_vectorize(train_dicts: list[dict], val_dicts: list[dict]) -> tuple[DictVectorizer, sp.csr_matrix,
                                                                                 sp.csr_matrix]:
    dv = DictVectorizer()
    return dv, dv.fit_transform(train_dicts), dv.transform(val_dicts)


def course_features(df_train: pd.DataFrame, df_val: pd.DataFrame) -> tuple[DictVectorizer, sp.csr_matrix,
                                                                            sp.csr_matrix]:
    """The notebook's features: records of PU_DO and trip_distance through a DictVectorizer; (dv, X_train, X_val)."""
    return course_vectorize(course_dicts(df_train), course_dicts(df_val))


def course_train(X_train: sp.csr_matrix, y_train: np.ndarray, rounds: int) -> xgb.Booster:
    train = xgb.DMatrix(X_train, label=y_train)
    return xgb.train(params=COURSE_NOTEBOOK_PARAMS, dtrain=train, num_boost_round=rounds)


def course_predict(booster: xgb.Booster, X_val: sp.csr_matrix) -> np.ndarray:
    return booster.predict(xgb.DMatrix(X_val))


def course_rmse(y_val: np.ndarray, y_pred: np.ndarray) -> float:
    return float(root_mean_squared_error(y_val, y_pred))


# The course's batch scoring (score.py of its deployment module): read and filter the month, records through the
# DictVectorizer, predict, save the results. Without the uuid per ride, so both sides' rows compare.

def course_score_filter(df: pd.DataFrame) -> pd.DataFrame:
    """What score.py's read_dataframe does after reading (its ride_id column left out)."""
    df["duration"] = df.lpep_dropoff_datetime - df.lpep_pickup_datetime
    df.duration = df.duration.dt.total_seconds() / 60
    return df[(df.duration >= 1) & (df.duration <= 60)]


def course_score_read_dataframe(path: str) -> pd.DataFrame:
    """score.py's read_dataframe."""
    return course_score_filter(course_read(path))


def course_prepare_dictionaries(df: pd.DataFrame) -> list[dict]:
    """score.py's prepare_dictionaries: zone ids as strings, PU_DO, and one dict per trip."""
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df[FEATURE_COLUMNS].to_dict(orient="records")


def course_apply_model(dv: DictVectorizer, booster: xgb.Booster, dicts: list[dict]) -> np.ndarray:
    """The registered model's DictVectorizer and booster on the records, as score.py's pipeline.predict does."""
    return booster.predict(xgb.DMatrix(dv.transform(dicts)))


def course_save_results(df: pd.DataFrame, y_pred: np.ndarray, run_id: str, output_file: str) -> None:
    """score.py's save_results (without ride_id)."""
    df_result = pd.DataFrame()
    df_result["lpep_pickup_datetime"] = df["lpep_pickup_datetime"]
    df_result["PULocationID"] = df["PULocationID"]
    df_result["DOLocationID"] = df["DOLocationID"]
    df_result["actual_duration"] = df["duration"]
    df_result["predicted_duration"] = y_pred
    df_result["diff"] = df_result["actual_duration"] - df_result["predicted_duration"]
    df_result["model_version"] = run_id
    df_result.to_parquet(output_file, index=False)
