"""The search's pure parts (taxi/tuning.py): its seed per month and the points it compares."""

from __future__ import annotations

from taxi import tasks, tuning


def test_the_search_seed_follows_the_month_and_only_the_month():
    seeds = {month: tuning.month_seed(42, month) for month in ("2021-01", "2021-02", "2023-01")}
    assert len(set(seeds.values())) == 3 and tuning.month_seed(42, "2021-01") == seeds["2021-01"]
    assert tuning.month_seed(43, "2021-01") != seeds["2021-01"]
    # the task's search uses it, and records it for the final training
    assert tasks.TuneHyperparams(year=2021, month=2).settings().seed == seeds["2021-02"]
    assert tasks.TuneHyperparams(year=2023, month=1, seed=43).settings().seed == tuning.month_seed(43, "2023-01")


def test_points_compare_by_their_typed_values_whatever_hyperopt_or_mlflow_made_of_them():
    """hyperopt's vals ([value] per label, leaves as floats) and a warm start's point (ints) of the same point are
    one key; another value of any label is another key."""
    point = {"max_leaves": 66, "learning_rate": 0.3, "min_child_weight": 12.5}
    vals = {"max_leaves": [66.0], "learning_rate": [0.3], "min_child_weight": [12.5]}
    assert tuning.point_key(vals) == tuning.point_key(point)
    assert tuning.point_key({**point, "learning_rate": 0.30000000000000004}) != tuning.point_key(point)
    assert tuning.point_key({**vals, "max_leaves": [67.0]}) != tuning.point_key(point)


def test_a_champion_of_another_feature_set_gives_a_cold_start():
    """The champion's parameters are a good first trial only for the features it was trained on."""
    params = {"grow_policy": "lossguide", "max_depth": "0", "max_leaves": "30", "learning_rate": "0.23",
              "min_child_weight": "38.4", "reg_alpha": "0.02", "reg_lambda": "0.02"}
    warm = tuning.warm_start("categorical", (3, {**params, "feature_set": "clock"}), feature_set="clock")
    assert warm["version"] == 3 and warm["point"]["max_leaves"] == 30
    for champion in ({**params, "feature_set": "course"}, params):  # logged before the feature set was
        cold = tuning.warm_start("categorical", (3, champion), feature_set="clock")
        assert (cold["version"], cold["point"]) == (None, None)
        assert cold["note"] == "cold start: champion v3 was trained on the course feature set, not clock"
