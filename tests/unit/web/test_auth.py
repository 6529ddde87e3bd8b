"""taxi/web/auth.py: the password check and the throttle on failed logins."""

from __future__ import annotations

from werkzeug.security import generate_password_hash

from taxi.web.auth import Throttle, password_matches


def test_only_the_password_of_the_hash_matches_and_never_an_empty_one():
    hashed = generate_password_hash("correct horse")
    assert password_matches(hashed, "correct horse")
    assert not password_matches(hashed, "correct horse ") and not password_matches(hashed, "")
    assert not password_matches(generate_password_hash(""), "")


def test_a_client_waits_until_its_oldest_counted_failure_leaves_the_window():
    now = [0.0]
    throttle = Throttle(per_client=3, overall=100, window=60, clock=lambda: now[0])
    for at in (0, 10, 20, 30):
        now[0] = at
        throttle.failed("a")
    now[0] = 35
    assert throttle.wait("a") == 10 + 60 - 35  # the third newest failure, at 10, counts last
    assert throttle.wait("b") == 0


def test_everyone_waits_once_the_overall_count_is_reached():
    now = [100.0]
    throttle = Throttle(per_client=5, overall=3, window=60, clock=lambda: now[0])
    for client in ("a", "b", "c"):
        throttle.failed(client)
    assert throttle.wait("d") == 60 and throttle.wait("a") == 60
    now[0] = 160.0
    assert throttle.wait("d") == 0 and len(throttle.failures) == 0  # forgotten


def test_the_failure_that_reaches_the_count_is_the_one_that_locks_out():
    now = [0.0]
    throttle = Throttle(per_client=3, overall=4, window=60, clock=lambda: now[0])
    throttle.failed("a"), throttle.failed("a")
    assert throttle.wait("a") == 0 and throttle.wait("b") == 0
    throttle.failed("a")
    assert throttle.wait("a") == 60 and throttle.wait("b") == 0
    throttle.failed("b")
    assert throttle.wait("b") == 60  # the fourth failure in all
