"""The search itself, as a pure function on real green features: subsamples, early stopping, nested MLflow runs."""

import mlflow
import numpy as np
import pytest
import xgboost as xgb
from mlflow.tracking import MlflowClient

from taxi import data, features, training, tuning


@pytest.fixture(scope="module")
def matrices(tlc_dir):
    frames = [data.clean_trips(data.read_trips(tlc_dir / f"green_tripdata_2021-0{m}.parquet", "green"), "green")[0]
              for m in (1, 2)]
    vectorizer = features.fit_vectorizer(frames[0])
    return [part for df in frames for part in (features.transform(vectorizer, df), features.target(df))]


def test_trials_train_and_stop_early_on_fixed_subsamples_of_both_months(matrices, tmp_path):
    X_train, y_train, X_valid, y_valid = matrices
    settings = tuning.TuningSettings(max_evals=2, num_boost_round=30, early_stopping_rounds=5, no_progress_evals=5,
                                     startup_evals=2, sample_rows=5_000, seed=3, nthread=2)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("tuning")  # an earlier test's active experiment is not in this database
    with mlflow.start_run() as parent:
        best = tuning.tune(X_train, y_train, X_valid, y_valid, settings)
    assert (best["trials"], best["train_rows_used"], best["valid_rows_used"]) == (2, 5_000, 5_000)

    # the best trial, retrained on the same subsample, scores its reported RMSE on the validation subsample
    X_fit, y_fit = tuning.subsample(X_train, y_train, 5_000, 3)
    X_check, y_check = tuning.subsample(X_valid, y_valid, 5_000, 3)
    booster = training.train_booster(X_fit, y_fit, best["params"], best["num_boost_round"], 3, 2)
    assert training.rmse(y_check, booster.inplace_predict(X_check)) == pytest.approx(best["val_rmse"], rel=1e-5)
    assert training.rmse(y_valid, booster.inplace_predict(X_valid)) != pytest.approx(best["val_rmse"], rel=1e-5)

    trials = MlflowClient().search_runs([parent.info.experiment_id],
                                        f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.metrics["val_rmse"] for r in trials)[0] == pytest.approx(best["val_rmse"])
    assert max(r.data.metrics["best_rounds"] for r in trials) <= 30


def test_subsample_keeps_a_small_month_whole_and_takes_a_fixed_subset_of_a_large_one(matrices):
    X_valid, y_valid = matrices[2], matrices[3]
    assert tuning.subsample(X_valid, y_valid, len(y_valid), 1)[0] is X_valid
    X_a, y_a = tuning.subsample(X_valid, y_valid, 1_000, 1)
    X_b, y_b = tuning.subsample(X_valid, y_valid, 1_000, 1)
    assert X_a.shape == (1_000, X_valid.shape[1]) and (X_a != X_b).nnz == 0 and (y_a == y_b).all()
    assert not (y_a == tuning.subsample(X_valid, y_valid, 1_000, 2)[1]).all()



def test_each_trial_stops_early_right_after_its_best_round(matrices, tmp_path):
    """On 1000 training rows 200 rounds overfit: a trial stops `early_stopping_rounds` after its best validation
    round, and reports that round and its RMSE, which retraining the same trial shows to be the curve's minimum."""
    X_train, y_train, X_valid, y_valid = matrices
    settings = tuning.TuningSettings(max_evals=3, num_boost_round=200, early_stopping_rounds=5, no_progress_evals=5,
                                     startup_evals=3, sample_rows=1_000, seed=3, nthread=2)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("early-stopping")
    with mlflow.start_run() as parent:
        best = tuning.tune(X_train, y_train, X_valid, y_valid, settings)
    trials = [r.data.metrics for r in MlflowClient().search_runs([parent.info.experiment_id],
                                                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")]
    assert len(trials) == 3
    assert all(t["rounds_trained"] == min(200, t["best_rounds"] + 5) for t in trials), trials
    assert any(t["rounds_trained"] < 200 for t in trials), trials

    X_fit, y_fit = tuning.subsample(X_train, y_train, 1_000, 3)
    X_check, y_check = tuning.subsample(X_valid, y_valid, 1_000, 3)
    curve: dict = {}
    xgb.train(tuning.booster_params(best["params"], 3, 2), xgb.DMatrix(X_fit, label=y_fit), num_boost_round=200,
              evals=[(xgb.DMatrix(X_check, label=y_check), "valid")], evals_result=curve, verbose_eval=False)
    rmse = np.array(curve["valid"]["rmse"])
    stopped_at = next(t["rounds_trained"] for t in trials if t["val_rmse"] == pytest.approx(best["val_rmse"]))
    assert best["num_boost_round"] == int(np.argmin(rmse[:int(stopped_at)])) + 1
    assert best["val_rmse"] == pytest.approx(rmse[:int(stopped_at)].min(), rel=1e-6)
