"""The report's text (taxi/report.py): what it says of the decision."""

from __future__ import annotations

from taxi import report


def test_the_decision_is_named_once():
    assert report.decision_line("champion", "champion: the first model, RMSE 5.54 within the cap 10") == (
        "Decision: **champion**: the first model, RMSE 5.54 within the cap 10")
    held = "held: data drift (trip_distance JS 0.186 above 0.1)"
    assert report.decision_line("held", held) == f"Decision: **held**: {held.removeprefix('held: ')}"
    older = "older than the champion: trained on 2021-01, champion v2 on 2023-01"
    assert report.decision_line("older", older) == f"Decision: **older**: {older}"  # no "older: " to drop
