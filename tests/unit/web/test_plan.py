"""taxi/web/plan.py, its pure part: the `luigi` arguments of a run from the page."""

from __future__ import annotations

import datetime as dt
import json

from taxi.web.plan import luigi_args

NOW = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.timezone.utc)


def test_one_month_runs_register_model_with_each_override_one_argument():
    args = luigi_args("green", [dt.date(2021, 1, 1)] * 2, {"seed": "7", "max_evals": "$(touch x)"}, NOW)
    assert args == ["--module", "taxi.tasks", "RegisterModel", "--color", "green", "--year", "2021", "--month", "1",
                    "--TuneHyperparams-seed", "7", "--TuneHyperparams-max-evals", "$(touch x)"]


def test_a_range_runs_range_monthly_up_to_the_month_after_the_last_reaching_back_to_the_first():
    args = luigi_args("yellow", [dt.date(2024, 11, 1), dt.date(2025, 12, 1)], {}, NOW)
    assert args[2:] == ["RangeMonthly", "--of", "RegisterMonth", "--of-params", json.dumps({"color": "yellow"}),
                        "--param-name", "month", "--start", "2024-11", "--stop", "2026-01",
                        "--months-back", str(12 * 2 + 1), "--now", str(int(NOW.timestamp()))]


def test_the_feature_set_is_an_argument_of_build_features():
    args = luigi_args("green", [dt.date(2021, 1, 1)], {"feature_set": "course", "seed": "7"}, NOW)
    assert args[-4:] == ["--BuildFeatures-feature-set", "course", "--TuneHyperparams-seed", "7"]
