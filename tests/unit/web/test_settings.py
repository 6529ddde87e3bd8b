"""taxi/web/settings.py, its pure parts: where the password hash comes from, and the session key kept private."""

from __future__ import annotations

import stat

import pytest

from taxi.web.settings import HASH_ENV, SettingsError, password_hash, secret_key

HASH = "scrypt:32768:8:1$salt$0123abcd"


def test_the_hash_comes_from_the_variable_or_else_the_systemd_credential(tmp_path):
    (tmp_path / "password-hash").write_text(HASH.replace("0123", "4567") + "\n")
    assert password_hash({HASH_ENV: HASH, "CREDENTIALS_DIRECTORY": str(tmp_path)}) == HASH
    assert password_hash({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == HASH.replace("0123", "4567")


@pytest.mark.parametrize("environ,message", [
    ({}, "no password hash: set TAXI_WEB_PASSWORD_HASH=$(.venv/bin/python -m taxi.web hash-password)"),
    ({"CREDENTIALS_DIRECTORY": "/nonexistent"}, "no password hash: set TAXI_WEB_PASSWORD_HASH="),
    ({HASH_ENV: "hunter22"}, "TAXI_WEB_PASSWORD_HASH is not a password hash (it must start with scrypt: or pbkdf2:)"),
])
def test_without_a_hash_the_page_does_not_start_and_says_what_to_set(environ, message):
    with pytest.raises(SettingsError) as refused:
        password_hash(environ)
    assert str(refused.value).startswith(message) and "hunter22" not in str(refused.value)  # a password not shown


def test_the_session_key_is_made_once_and_readable_by_its_user_only(tmp_path):
    state = tmp_path / "state"
    key = secret_key(state)
    assert len(key) == 32 and secret_key(state) == key
    assert stat.S_IMODE((state / "secret-key").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert secret_key(tmp_path / "other") != key
