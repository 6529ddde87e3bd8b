"""The course's notebook as one script, the baseline a whole pipeline run is timed against: read the training and
validation months, the duration and filter, DictVectorizer on {PU_DO, trip_distance} records, XGBoost with the
course's parameters for 100 rounds, the validation RMSE. It also leaves its vectorizer and booster in OUT, so that the
benchmark can score them on the pipeline's gate rows.

    python -P -m bench.course_script TRAIN.parquet VALID.parquet OUT
"""

from __future__ import annotations

import os
import pickle
import sys

from bench.course import (COURSE_ROUNDS, course_features, course_predict, course_read_dataframe, course_rmse,
                          course_train)


def main(train_path: str, valid_path: str, out_dir: str) -> None:
    df_train, df_val = course_read_dataframe(train_path), course_read_dataframe(valid_path)
    dv, X_train, X_val = course_features(df_train, df_val)
    booster = course_train(X_train, df_train["duration"].values, COURSE_ROUNDS)
    rmse = course_rmse(df_val["duration"].values, course_predict(booster, X_val))
    os.makedirs(out_dir, exist_ok=True)
    booster.save_model(os.path.join(out_dir, "booster.ubj"))
    with open(os.path.join(out_dir, "dv.pkl"), "wb") as f:
        pickle.dump(dv, f)
    print(rmse)


if __name__ == "__main__":
    main(*sys.argv[1:4])
