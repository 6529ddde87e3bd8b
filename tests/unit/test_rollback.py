"""The alias history's entries (taxi/alias_history.py) and the rollback's choice of version (taxi/rollback.py): each
move's tag round-trips, tags sort in time order whatever order they are read in, and "the previous champion" is the
one the champion's own decision replaced, with every refusal naming the versions there are."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from taxi import alias_history, rollback
from taxi.alias_history import Move

NAME = "taxi-duration-green"
T0 = dt.datetime(2026, 12, 6, 9, 30, 0, 123456, tzinfo=dt.timezone.utc)


def move(seconds: float, to: int, source: int | None = None, action: str = "decision", **fields) -> Move:
    return Move(T0 + dt.timedelta(seconds=seconds), fields.pop("alias", "champion"), source, to, action,
                fields.pop("why", "a reason"), fields.pop("who", "taxi"), fields.pop("via", "pipeline"), **fields)


def test_a_move_round_trips_through_its_tag():
    made = move(0, 2, 3, "rollback", why="v3 predicts 0 for airport trips", who="alice", via="operator page")
    key, value = made.key(), made.encode()
    assert key.startswith("taxi.alias_history.20261206T093000.123456Z-") and len(key) <= 250
    assert json.loads(value) == {"alias": "champion", "from": 3, "to": 2, "action": "rollback",
                                 "why": "v3 predicts 0 for airport trips", "who": "alice", "via": "operator page"}
    assert alias_history.decode(key, value) == made
    flagged = move(1, 4, None, accepted=("accept_drift",))
    assert alias_history.decode(flagged.key(), flagged.encode()) == flagged
    assert flagged.what == "decision (accept_drift)" and flagged.cells()[2:5] == ("-", "v4", "decision (accept_drift)")


def test_a_long_reason_is_cut_to_what_a_tag_holds():
    made = move(0, 1, why="x" * 10_000)
    assert len(alias_history.decode(made.key(), made.encode()).why) == alias_history.MAX_WHY


def test_moves_come_back_in_time_order_and_a_foreign_tag_is_left_out():
    made = [move(seconds, to) for seconds, to in ((0, 1), (0.000001, 2), (9, 3), (3600 * 30, 4))]
    tags = {m.key(): m.encode() for m in made}
    tags["taxi.alias_history.not-a-move"] = "{}"
    tags["owner"] = "the ML team"
    shuffled = dict(random.Random(7).sample(sorted(tags.items()), len(tags)))
    assert alias_history.moves(shuffled) == made
    assert [cells[3] for cells in alias_history.table(made)[1:]] == ["v4", "v3", "v2", "v1"]  # newest first


def test_two_moves_of_one_instant_get_two_keys():
    made = move(0, 1)
    assert len({made.key() for _ in range(100)}) == 100


def version(number: int, decision: str, previous: int | None) -> rollback.Version:
    return rollback.Version(number, (), decision, previous, 5.0, T0, "")


# v1 first champion; v2 beat it; v3 challenger of v2; v4 beat v2; v5 older; v6 beat v4
LINEAGE = {1: version(1, "champion", None), 2: version(2, "champion", 1), 3: version(3, "challenger", 2),
           4: version(4, "champion", 2), 5: version(5, "older", 4), 6: version(6, "champion", 4)}


@pytest.mark.parametrize("current,expected", [(6, 4), (4, 2), (2, 1)])
def test_the_previous_champion_is_the_one_the_champion_s_decision_replaced(current, expected):
    assert rollback.previous_champion(current, LINEAGE) == expected
    assert rollback.target(NAME, None, current, LINEAGE) == expected


def test_rolling_back_twice_walks_back_the_lineage():
    """After 6 -> 4, the champion is v4, whose decision replaced v2: not back to v6."""
    current = 6
    for expected in (4, 2, 1):
        current = rollback.target(NAME, None, current, LINEAGE)
        assert current == expected


@pytest.mark.parametrize("current,words", [
    (1, "v1 was the first champion"),
    (3, "v3 did not become champion by a decision of its own (its decision: challenger)"),
])
def test_no_previous_champion_is_refused_with_the_versions(current, words):
    with pytest.raises(rollback.RollbackRefused) as refused:
        rollback.target(NAME, None, current, LINEAGE)
    assert words in str(refused.value) and "v1, v2, v3, v4, v5, v6" in str(refused.value)


@pytest.mark.parametrize("to,expected", [("3", 3), ("v5", 5), (" 2 ", 2), (f"{NAME}/1", 1),
                                         (f"models:/{NAME}/4", 4)])
def test_to_names_a_version_of_the_color_s_own_model(to, expected):
    assert rollback.target(NAME, to, 6, LINEAGE) == expected


@pytest.mark.parametrize("to,words", [
    ("9", f"{NAME} has no version 9 in the registry (versions of {NAME}: v1, v2, v3, v4, v5, v6)"),
    ("taxi-duration-yellow/2", "taxi-duration-yellow/2 is a version of taxi-duration-yellow, not of " + NAME),
    ("models:/taxi-duration-yellow/2", "is a version of taxi-duration-yellow"),
    ("six", "--to 'six' is not a version"),
    ("6", "v6 is the champion of taxi-duration-green already"),
])
def test_a_bad_to_is_refused_naming_the_versions(to, words):
    with pytest.raises(rollback.RollbackRefused) as refused:
        rollback.target(NAME, to, 6, LINEAGE)
    assert words in str(refused.value) and "v1, v2, v3, v4, v5, v6" in str(refused.value)


def test_no_champion_is_refused():
    with pytest.raises(rollback.RollbackRefused, match="has no champion to roll back"):
        rollback.target(NAME, "1", None, LINEAGE)


def test_a_previous_champion_the_registry_lost_is_refused():
    lost = {number: found for number, found in LINEAGE.items() if number != 4}
    with pytest.raises(rollback.RollbackRefused, match=r"has no version 4 .*v1, v2, v3, v5, v6"):
        rollback.target(NAME, None, 6, lost)


@pytest.mark.parametrize("reason", ["", "   ", "\n"])
def test_a_rollback_needs_a_reason(reason):
    with pytest.raises(rollback.RollbackRefused, match="give the reason"):
        rollback.check_reason(reason)


def test_the_reason_is_kept_on_one_line_and_short():
    assert rollback.check_reason("  v6 predicts\n0 for  JFK ") == "v6 predicts 0 for JFK"
    with pytest.raises(rollback.RollbackRefused, match="keep it to 500"):
        rollback.check_reason("x" * 501)


def test_a_move_is_superseded_once_the_alias_moved_again_after_it():
    decided = [move(1, 1), move(2, 2, 1)]
    assert not alias_history.superseded(decided, "champion", 2)  # the last move: a rerun finishes it
    assert not alias_history.superseded(decided, "champion", 3)  # never moved there
    assert alias_history.superseded([*decided, move(3, 1, 2, action=alias_history.ROLLBACK)], "champion", 2)
    assert not alias_history.superseded([*decided, move(3, 5, alias="challenger")], "champion", 2)
