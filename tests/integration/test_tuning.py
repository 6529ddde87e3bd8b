"""The search itself, as a pure function on real green features: subsamples, early stopping, nested MLflow runs."""

import mlflow
import numpy as np
import pytest
import xgboost as xgb
from mlflow.tracking import MlflowClient

from bench.course import COURSE_PARAMS
from taxi import data, features, metrics, training, tuning


@pytest.fixture(scope="module")
def matrices(tlc_dir):
    frames = [data.clean_trips(data.read_trips(tlc_dir / f"green_tripdata_2021-0{m}.parquet", "green"), "green")[0]
              for m in (1, 2)]
    vectorizer = features.fit_vectorizer(frames[0])
    return [part for df in frames for part in (features.transform(vectorizer, df), features.target(df))]


def test_trials_train_for_num_boost_round_rounds_on_fixed_subsamples_of_both_months(matrices, tmp_path):
    """Trials train on fixed subsamples of both months for `num_boost_round` rounds (early stopping, which would end
    them sooner, is test_each_trial_stops_early_right_after_its_best_round's: here it cannot cut in first)."""
    X_train, y_train, X_valid, y_valid = matrices
    settings = tuning.TuningSettings(
        space="lossguide", max_evals=2, num_boost_round=8, early_stopping_rounds=8, no_progress_evals=5,
        startup_evals=2, sample_rows=5_000, seed=3, nthread=2, prune_tolerance=0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("tuning")  # an earlier test's active experiment is not in this database
    with mlflow.start_run() as parent:  # the course reference: its own test
        best = tuning.tune(X_train, y_train, X_valid, y_valid, settings)
    assert (best["trials"], best["train_rows_used"], best["valid_rows_used"]) == (2, 5_000, 5_000)

    # the best trial, retrained on the same subsample, scores its reported RMSE on the validation subsample
    X_fit, y_fit = tuning.subsample(X_train, y_train, 5_000, 3)
    X_check, y_check = tuning.subsample(X_valid, y_valid, 5_000, 3)
    booster = training.train_booster(X_fit, y_fit, best["params"], best["num_boost_round"], 3, 2)
    assert metrics.rmse(y_check, booster.inplace_predict(X_check)) == pytest.approx(best["val_rmse"], rel=1e-5)
    assert metrics.rmse(y_valid, booster.inplace_predict(X_valid)) != pytest.approx(best["val_rmse"], rel=1e-5)

    trials = MlflowClient().search_runs([parent.info.experiment_id],
                                        f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.metrics["val_rmse"] for r in trials)[0] == pytest.approx(best["val_rmse"])
    # each trial trained the 8 rounds allowed, and the best one's best round is the minimum of its validation curve,
    # retrained here for those 8 rounds
    assert [r.data.metrics["rounds_trained"] for r in trials] == [8, 8]
    curve: dict = {}
    xgb.train(tuning.booster_params(best["params"], 3, 2), xgb.DMatrix(X_fit, label=y_fit), num_boost_round=8,
              evals=[(xgb.DMatrix(X_check, label=y_check), "valid")], evals_result=curve, verbose_eval=False)
    assert best["num_boost_round"] == int(np.argmin(curve["valid"]["rmse"])) + 1


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
    settings = tuning.TuningSettings(
        space="lossguide", max_evals=3, num_boost_round=200, early_stopping_rounds=5, no_progress_evals=5,
        startup_evals=3, sample_rows=1_000, seed=3, nthread=2, prune_tolerance=0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("early-stopping")
    with mlflow.start_run() as parent:
        best = tuning.tune(X_train, y_train, X_valid, y_valid, settings)
    trials = [r.data.metrics for r in MlflowClient().search_runs([parent.info.experiment_id],
                                                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")]
    assert len(trials) == 3
    assert all(t["rounds_trained"] == min(200, t["best_rounds"] + 5) for t in trials), trials
    assert any(t["rounds_trained"] < 200 for t in trials), trials

    # the best trial retrained here for the rounds it trained (a curve's rounds do not depend on later ones)
    stopped_at = next(t["rounds_trained"] for t in trials if t["val_rmse"] == pytest.approx(best["val_rmse"]))
    X_fit, y_fit = tuning.subsample(X_train, y_train, 1_000, 3)
    X_check, y_check = tuning.subsample(X_valid, y_valid, 1_000, 3)
    curve: dict = {}
    xgb.train(tuning.booster_params(best["params"], 3, 2), xgb.DMatrix(X_fit, label=y_fit),
              num_boost_round=int(stopped_at), evals=[(xgb.DMatrix(X_check, label=y_check), "valid")],
              evals_result=curve, verbose_eval=False)
    rmse = np.array(curve["valid"]["rmse"])
    assert best["num_boost_round"] == int(np.argmin(rmse[:int(stopped_at)])) + 1
    assert best["val_rmse"] == pytest.approx(rmse[:int(stopped_at)].min(), rel=1e-6)


def _search(matrices, tmp_path, settings: tuning.TuningSettings, **kwargs) -> tuple[dict, dict[int, object]]:
    """tune() in a fresh MLflow run; (its result, trial number -> the trial's MLflow run)."""
    X_train, y_train, X_valid, y_valid = matrices
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("search")
    with mlflow.start_run() as parent:
        best = tuning.tune(X_train, y_train, X_valid, y_valid, settings, **kwargs)
    runs = MlflowClient().search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return best, {int(r.info.run_name.removeprefix("trial-")): r for r in runs}


def _curve(matrices, params: dict, rounds: int, rows: int, seed: int, booster_seed: int | None = None) -> np.ndarray:
    """A trial's validation RMSE after each round, retrained on the trials' subsamples (of the search's seed)."""
    X_train, y_train, X_valid, y_valid = matrices
    X_fit, y_fit = tuning.subsample(X_train, y_train, rows, seed)
    X_check, y_check = tuning.subsample(X_valid, y_valid, rows, seed)
    curve: dict = {}
    xgb.train(tuning.booster_params(params, seed if booster_seed is None else booster_seed, 2),
              xgb.DMatrix(X_fit, label=y_fit), num_boost_round=rounds,
              evals=[(xgb.DMatrix(X_check, label=y_check), "valid")], evals_result=curve, verbose_eval=False)
    return np.array(curve["valid"]["rmse"])


def test_a_trial_behind_the_best_finished_trial_is_pruned_at_the_first_round_it_falls_behind(matrices, tmp_path):
    """Pruned trials stop at the first round (from prune_after_rounds on) where they are more than the tolerance
    behind the best finished trial before them, are tagged pruned, and never become the best; the others run on."""
    settings = tuning.TuningSettings(
        space="lossguide", max_evals=5, num_boost_round=30, early_stopping_rounds=30, no_progress_evals=5,
        startup_evals=5, sample_rows=3_000, seed=4, nthread=2, prune_tolerance=0.01,
                                     prune_after_rounds=5)
    best, runs = _search(matrices, tmp_path, settings)
    history = best["history"]
    pruned = [t for t in history if t["pruned_at"] is not None]
    assert pruned and len(pruned) < len(history), history
    for trial in history:
        assert runs[trial["trial"]].data.tags["taxi.pruned"] == str(trial["pruned_at"] is not None).lower()
        finished_before = [t for t in history[:trial["trial"]] if t["pruned_at"] is None]
        curve = _curve(matrices, trial["params"], 30, 3_000, 4)
        if not finished_before:
            assert trial["pruned_at"] is None
            continue
        leader = min(finished_before, key=lambda t: t["val_rmse"])
        reference = _curve(matrices, leader["params"], leader["rounds_trained"], 3_000, 4)
        behind = [r for r in range(5, 31) if curve[r - 1] > reference[min(r, len(reference)) - 1] * 1.01]
        assert trial["pruned_at"] == (behind[0] if behind else None), trial
        assert trial["rounds_trained"] == (trial["pruned_at"] or 30)
    assert best["val_rmse"] == min(t["val_rmse"] for t in history if t["pruned_at"] is None)
    assert best["val_rmse"] not in [t["val_rmse"] for t in pruned]


def test_the_warm_start_is_the_first_trial_and_the_search_goes_on_from_it(matrices, tmp_path):
    """A warm start (the champion's parameters as MLflow returns them: strings) is trial 0, tagged as such, with
    exactly those parameters; the search then runs its other trials."""
    champion_run_params = {"grow_policy": "lossguide", "max_depth": "0", "max_leaves": "97", "learning_rate": "0.33",
                           "min_child_weight": "1.5", "reg_alpha": "0.02", "reg_lambda": "0.04",
                           "num_boost_round": "80", "seed": "42", "tuning_trials": "5",
                           "features_version": "v1"}
    point = tuning.warm_start_point("lossguide", champion_run_params)
    assert point == {"max_leaves": 97, "learning_rate": 0.33, "min_child_weight": 1.5, "reg_alpha": 0.02,
                     "reg_lambda": 0.04}
    settings = tuning.TuningSettings(
        space="lossguide", max_evals=3, num_boost_round=20, early_stopping_rounds=5, no_progress_evals=5,
        startup_evals=3, sample_rows=2_000, seed=5, nthread=2, prune_tolerance=0)
    best, runs = _search(matrices, tmp_path, settings, warm_start=point)
    first = best["history"][0]
    assert first["warm_start"] and first["params"] == {"grow_policy": "lossguide", "max_depth": 0, **point}
    assert runs[0].data.params["max_leaves"] == "97" and runs[0].data.tags["taxi.warm_start"] == "true"
    assert [t["warm_start"] for t in best["history"]] == [True, False, False]
    assert runs[1].data.tags["taxi.warm_start"] == "false" and runs[1].data.params != runs[0].data.params


def test_a_champion_from_another_space_gives_no_warm_start():
    course_champion = {k: str(v) for k, v in COURSE_PARAMS.items()}
    assert tuning.warm_start_point("lossguide", course_champion) is None
    assert tuning.warm_start_point("course", course_champion) == tuning.typed(COURSE_PARAMS)
    lossguide_champion = {"grow_policy": "lossguide", "max_depth": "0", "max_leaves": "97", "learning_rate": "0.33",
                          "min_child_weight": "1.5", "reg_alpha": "0.02", "reg_lambda": "0.04"}
    assert tuning.warm_start_point("course", lossguide_champion) is None  # max_depth 0 is not a depth-wise tree


def test_no_trial_repeats_a_point_the_warm_start_included(matrices, tmp_path):
    """The bug it guards: a month's search warm-started from the champion, whose parameters were the first random
    point of a search with the same seed, tried that point twice. A search's points are all new."""
    settings = tuning.TuningSettings(
        space="lossguide", max_evals=1, num_boost_round=3, early_stopping_rounds=3,
        no_progress_evals=5, startup_evals=3, sample_rows=1_000, seed=7, nthread=2,
                                     prune_tolerance=0)
    (tmp_path / "first").mkdir(), (tmp_path / "again").mkdir()
    first, _ = _search(matrices, tmp_path / "first", settings)
    champion = {k: str(v) for k, v in first["params"].items()}
    point = tuning.warm_start_point("lossguide", champion)
    again = tuning.TuningSettings(**{**vars(settings), "max_evals": 3})
    best, _ = _search(matrices, tmp_path / "again", again, warm_start=point)
    keys = [tuning.point_key({k: v for k, v in t["params"].items() if k in point}) for t in best["history"]]
    assert len(keys) == 3 and keys[0] == tuning.point_key(point)
    assert len(set(keys)) == len(keys), best["history"]
