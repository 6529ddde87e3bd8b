"""Credentials in URLs: split off for use, redacted wherever a URL is logged or recorded (pure: no luigi).

A URL may carry secrets in its user info (`https://user:password@host`) and in its query (a presigned
`?X-Amz-Signature=...`); the redacted form keeps the scheme, host, port and path, which is what a reader needs.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"
MIN_QUERY_SECRET = 6  # shorter query values (an expiry, a version) are left in error texts; redact() hides them all


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without user info, (user, password) or None)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (user, password)


def tracking_identity(tracking_uri: str) -> str:
    """The tracking URI as it is recorded and compared: without credentials, a sqlite file as an absolute path (a
    relative one names another database in another working directory)."""
    uri, _ = split_credentials(tracking_uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix):] not in ("", ":memory:"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def redact(url: str) -> str:
    """`url` with its user info and every query value (a bare token too) replaced by ***."""
    parts = urlsplit(url)
    if not parts.scheme or ("@" not in parts.netloc and not parts.query):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{pair.split('=', 1)[0]}={REDACTED}" if "=" in pair else REDACTED if pair else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str, url: str) -> str:
    """`text` (an error message about `url`) with every secret of `url` replaced by ***."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _secrets(url: str) -> set[str]:
    """The password (or a user name standing alone, as a token would) and the query values (or bare tokens) long
    enough to be keys or signatures, raw and decoded."""
    parts = urlsplit(url)
    found = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        found |= {userinfo, password} if password else {userinfo}
    values = [pair.partition("=")[2] if "=" in pair else pair for pair in parts.query.split("&")]
    values += [value for _, value in parse_qsl(parts.query)]
    found |= {value for value in values if len(value) >= MIN_QUERY_SECRET}
    return {secret for secret in found if secret}
