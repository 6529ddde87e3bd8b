"""taxi/urls.py: credentials split off URLs, and redacted from every URL form and from error texts."""

from __future__ import annotations

import os

import pytest

from taxi.urls import redact, redact_text, split_credentials, tracking_identity


@pytest.mark.parametrize("url,shown", [
    ("https://user:hunter22@mirror.example:8443/tlc/f.parquet", "https://***@mirror.example:8443/tlc/f.parquet"),
    ("https://user:p@ss@mirror.example/f.parquet", "https://***@mirror.example/f.parquet"),  # an @ in the password
    ("https://ghp_tokenonly@mirror.example/f.parquet", "https://***@mirror.example/f.parquet"),  # user only
    ("https://bucket.example/f.parquet?X-Amz-Credential=AKIA123%2F2026&X-Amz-Signature=0a1b2c3d4e&X-Amz-Expires=300",
     "https://bucket.example/f.parquet?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=***"),
    ("https://hooks.example/services?sig=abcdef123456", "https://hooks.example/services?sig=***"),
    ("http://[::1]:9000/bucket/f.parquet?c2VjcmV0dG9rZW4", "http://[::1]:9000/bucket/f.parquet?***"),  # bare token
    ("http://admin:pw@[2001:db8::1]:5000/api", "http://***@[2001:db8::1]:5000/api"),
    ("s3://bucket/tlc/f.parquet?aws_access_key_id=AKIAEXAMPLE&aws_secret_access_key=wJalrXUtnFEMI",
     "s3://bucket/tlc/f.parquet?aws_access_key_id=***&aws_secret_access_key=***"),
    ("https://host/p?a&&b=", "https://host/p?***&&b=***"),  # an empty pair stays empty
])
def test_redact_hides_user_info_and_every_query_value(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("url", ["https://d37ci6vzurychx.cloudfront.net/trip-data/green_tripdata_2021-01.parquet",
                                 "/srv/tlc/green_tripdata_2021-01.parquet", "sqlite:///mlflow.db",
                                 "s3://bucket/tlc", "http://127.0.0.1:5000", "https://host/p?"])
def test_redact_leaves_a_url_without_secrets_as_it_is(url):
    assert redact(url) == url


def test_split_credentials_gives_the_url_to_use_and_the_pair():
    assert split_credentials("http://alice:s3cret@mlflow.example:5000/x?y=1") == (
        "http://mlflow.example:5000/x?y=1", ("alice", "s3cret"))
    assert split_credentials("http://tokenonly@[::1]:5000") == ("http://[::1]:5000", ("tokenonly", ""))
    assert split_credentials("http://mlflow.example:5000") == ("http://mlflow.example:5000", None)


def test_the_tracking_identity_has_no_credentials_and_an_absolute_sqlite_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_identity("sqlite:///mlflow.db") == f"sqlite:///{os.path.join(tmp_path, 'mlflow.db')}"
    assert tracking_identity("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert tracking_identity("sqlite:///:memory:") == "sqlite:///:memory:"
    assert tracking_identity("http://alice:s3cret@mlflow.example:5000") == "http://mlflow.example:5000"


def test_redact_text_hides_every_secret_of_the_url_in_a_message():
    url = "https://alice:hunter22@mirror.example/f.parquet?sig=abc%2Fdef1&e=300"
    message = f"GET {url} failed: 403 for user alice, password hunter22, signature abc/def1 (raw abc%2Fdef1), e=300"
    assert redact_text(message, url) == ("GET https://***@mirror.example/f.parquet?sig=***&e=300 failed: 403 for "
                                         "user alice, password ***, signature *** (raw ***), e=300")


def test_redact_text_hides_a_user_name_standing_alone_as_a_token():
    url = "https://ghp_0123456789@mirror.example/f.parquet"
    assert redact_text(f"denied: ghp_0123456789 at {url}", url) == "denied: *** at https://***@mirror.example/f.parquet"


def test_redact_text_hides_a_bare_query_token_and_keeps_short_values():
    url = "http://[::1]:9000/b/f.parquet?c2VjcmV0dG9rZW4&v=2"
    assert redact_text(f"no such key at {url} (c2VjcmV0dG9rZW4)", url) == \
        "no such key at http://[::1]:9000/b/f.parquet?***&v=2 (***)"
