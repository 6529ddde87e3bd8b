"""The course's own code path (MLOps Zoomcamp), kept verbatim in spirit as the reference the pipeline must match."""

from __future__ import annotations

import pandas as pd
from sklearn.feature_extraction import DictVectorizer


def course_read_dataframe(path: str) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df["duration"] = df.lpep_dropoff_datetime - df.lpep_pickup_datetime
    df.duration = df.duration.apply(lambda td: td.total_seconds() / 60)
    df = df[(df.duration >= 1) & (df.duration <= 60)]
    categorical = ["PULocationID", "DOLocationID"]
    df[categorical] = df[categorical].astype(str)
    df["PU_DO"] = df["PULocationID"] + "_" + df["DOLocationID"]
    return df


def course_features(df_train: pd.DataFrame, df_val: pd.DataFrame):
    dv = DictVectorizer()
    X_train = dv.fit_transform(df_train[["PU_DO", "trip_distance"]].to_dict(orient="records"))
    X_val = dv.transform(df_val[["PU_DO", "trip_distance"]].to_dict(orient="records"))
    return dv, X_train, X_val
