"""The champion decision's rules, one by one (taxi/promotion.py): the margin, the cap, the months' order, the input
contract, drift, and their order when there is no champion yet."""

from __future__ import annotations

import pytest

from taxi import checks, drift, promotion

POLICY = promotion.Policy()
COURSE_INPUTS = ("PULocationID (any)", "DOLocationID (any)", "trip_distance (double)")
CLOCK_INPUTS = (*COURSE_INPUTS, "lpep_pickup_datetime (any)")


def champion(rmse: float, month: str = "2022-01", inputs: tuple[str, ...] = ()) -> promotion.Champion:
    return promotion.Champion(version=1, month=month, gate_rmse=rmse, inputs=inputs)


@pytest.mark.parametrize("gate_rmse,champion_rmse,expected", [
    (5.30, 5.40, "champion"),  # -1.9 %
    (5.38, 5.40, "challenger"),  # -0.4 %: better, but not by the margin
    (5.45, 5.40, "challenger"),
])
def test_the_margin_decides_between_champion_and_challenger(gate_rmse, champion_rmse, expected):
    decision = promotion.decide("2022-02", gate_rmse, champion(champion_rmse), [], POLICY)
    assert decision.decision == expected and decision.alias == expected
    assert decision.reason.startswith(f"{expected}: {gate_rmse:.2f} vs {champion_rmse:.2f}, ")
    assert "0.5 % margin" in decision.reason and decision.previous_champion_gate_rmse == champion_rmse
    lenient = promotion.decide("2022-02", gate_rmse, champion(champion_rmse), [], promotion.Policy(min_improvement=0))
    assert lenient.decision == ("champion" if gate_rmse < champion_rmse else "challenger")


def test_the_cap_rejects_even_the_first_model_and_a_better_one():
    for before in (None, champion(12.0)):
        decision = promotion.decide("2022-02", 10.5, before, [], POLICY)
        assert decision.decision == "rejected" and decision.alias is None
        assert decision.reason == "rejected: RMSE 10.50 above the cap 10"
    assert promotion.decide("2022-02", 9.9, None, [], POLICY).decision == "champion"


def test_drift_holds_unless_accepted_and_an_older_month_never_takes_the_alias():
    drifted = ["trip_distance JS 0.186 above 0.1"]
    held = promotion.decide("2022-02", 5.0, champion(6.0), drifted, POLICY)
    assert (held.decision, held.alias) == ("held", None)
    assert held.reason == "held: data drift (trip_distance JS 0.186 above 0.1)"
    accepted = promotion.decide("2022-02", 5.0, champion(6.0), drifted, promotion.Policy(accept_drift=True))
    assert accepted.decision == "champion" and accepted.reason.endswith("; data drift accepted (trip_distance JS "
                                                                        "0.186 above 0.1)")
    older = promotion.decide("2021-12", 4.0, champion(6.0), [], POLICY)
    assert (older.decision, older.alias) == ("older", None)
    assert older.reason == "older than the champion: trained on 2021-12, champion v1 on 2022-01"


def test_a_model_whose_input_contract_differs_from_the_champions_is_held_unless_accepted():
    """Clients pinned to the alias must not receive a model that rejects their rows: a better model with another
    input contract is held, with the change named, and promoted only with the operator's flag, recorded."""
    held = promotion.decide("2022-02", 4.0, champion(6.0, inputs=COURSE_INPUTS), [], POLICY, CLOCK_INPUTS)
    assert (held.decision, held.alias) == ("held", None)
    assert held.reason == "held: input contract differs from champion v1's (adds lpep_pickup_datetime (any))"
    narrower = promotion.decide("2022-02", 4.0, champion(6.0, inputs=CLOCK_INPUTS), [], POLICY, COURSE_INPUTS)
    assert narrower.reason.endswith("(removes lpep_pickup_datetime (any))") and narrower.decision == "held"
    retyped = tuple(c.replace("(double)", "(long)") for c in CLOCK_INPUTS)
    assert promotion.decide("2022-02", 4.0, champion(6.0, inputs=CLOCK_INPUTS), [], POLICY, retyped).decision == "held"
    flag = promotion.Policy(accept_contract_change=True)
    accepted = promotion.decide("2022-02", 4.0, champion(6.0, inputs=COURSE_INPUTS), [], flag, CLOCK_INPUTS)
    assert accepted.decision == "champion" and accepted.reason.endswith(
        "; input contract change accepted (adds lpep_pickup_datetime (any))")
    assert flag.accepted() == {"accept_drift": False, "accept_contract_change": True}
    # the same contract is no change; the first model has no champion's to differ from
    same = champion(6.0, inputs=CLOCK_INPUTS)
    assert promotion.decide("2022-02", 4.0, same, [], POLICY, CLOCK_INPUTS).decision == "champion"
    assert promotion.decide("2022-02", 4.0, None, [], POLICY, CLOCK_INPUTS).decision == "champion"
    # the months' order comes first: an older month is older, whatever its contract
    assert promotion.decide("2021-12", 4.0, champion(6.0, inputs=COURSE_INPUTS), [], POLICY,
                            CLOCK_INPUTS).decision == "older"


def test_with_no_champion_yet_the_rules_keep_their_order():
    """After a rejected first model there is no champion: a drifted month is held, not made the first champion; a
    month over the cap is rejected before its drift is looked at."""
    drifted = ["trip_distance JS 0.186 above 0.1"]
    held = promotion.decide("2022-02", 5.0, None, drifted, POLICY, CLOCK_INPUTS)
    assert (held.decision, held.reason) == ("held", "held: data drift (trip_distance JS 0.186 above 0.1)")
    assert promotion.decide("2022-02", 10.5, None, drifted, POLICY).decision == "rejected"
    accepted = promotion.decide("2022-02", 5.0, None, drifted, promotion.Policy(accept_drift=True))
    assert accepted.decision == "champion" and accepted.reason.startswith("champion: the first model, RMSE 5.00 ")


def test_settings_out_of_range_are_refused_naming_the_setting():
    for bad, name in ((promotion.Policy(max_rmse=0), "max_rmse"), (promotion.Policy(min_improvement=1), "min_"
                      "improvement"), (drift.DriftSettings(max_zone_distance=0), "max_zone_distance"),
                      (checks.CheckSettings(max_failing_share=1.5), "max_failing_share")):
        with pytest.raises(ValueError, match=name):
            bad.validate()
