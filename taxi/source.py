"""Getting TLC months from `[taxi] source` (its URLs: data.source_url): whether a month is published there, and one
fetch for every kind of source (HTTP(S) with retries, a folder or file:// URL, an s3:// mirror).

Messages and logs name a URL without its credentials (taxi.urls.redact).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Callable
from urllib.parse import unquote, urlparse

import requests

from taxi import storage
from taxi.data import CHUNK, DataError
from taxi.urls import redact, redact_text

log = logging.getLogger(__name__)

# S3 behind CloudFront (the TLC's host) answers 403 rather than 404 for a key that does not exist
NOT_PUBLISHED = (403, 404)
HEAD_TIMEOUT = 30.0

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class MonthNotPublished(DataError):
    """The source has no file for this month (HTTP 404 / missing file or object)."""


class TransientSourceError(IOError):
    """A failure worth retrying: 5xx, timeout, dropped connection, short body. `reason` is the few words a retry
    warning shows; `hint`, what to do, ends the message."""

    def __init__(self, message: str, reason: str, hint: str = ""):
        super().__init__(f"{message}; {hint}" if hint else message)
        self.core, self.reason, self.hint = message, reason, hint

    def gave_up(self, attempts: int) -> "TransientSourceError":
        return type(self)(f"{self.core} (gave up after {attempts} attempts)", self.reason, self.hint)


class SourceUnreachable(TransientSourceError):
    """No connection to the source's host at all (no name resolution, refused, no route): offline, or a wrong URL."""

    HINT = "offline? set [taxi] source or TAXI_SOURCE to a mirror folder of TLC files"


def published(url: str, timeout: float = HEAD_TIMEOUT) -> bool:
    """Whether the source has the file at `url`: an HTTP HEAD request for http(s), the object for s3://, else the
    file. A server error or an unreachable server raises instead of reading as 'not published'."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        shown = redact(url)
        try:
            response = requests.head(url, timeout=timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise TransientSourceError(f"{type(exc).__name__} while asking {shown} whether the month is published: "
                                       f"{redact_text(str(exc), url)}", type(exc).__name__) from None
        if response.status_code in NOT_PUBLISHED:
            return False
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientSourceError(f"HTTP {response.status_code} from {shown}", f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise DataError(f"HTTP {response.status_code} {response.reason} for {shown}: check [taxi] source")
        return True
    if storage.is_s3(url):
        client = storage.s3_client()
        with storage.s3_errors_named(client, redact(url)):
            return client.exists(url)
    return os.path.isfile(_local_path(url))


def fetch(url: str, dest: str, *, retries: int = 4, backoff: float = 2.0, timeout: float = 30.0,
          progress: Progress | None = None) -> None:
    """Copy `url` (http(s), s3://, file:// or a local path) to `dest`, retrying transient HTTP failures."""
    if storage.is_s3(url):
        _fetch_s3(url, dest)
        return
    if urlparse(url).scheme in ("http", "https"):
        for attempt in range(1, retries + 2):
            try:
                _fetch_http(url, dest, timeout, progress)
                return
            except TransientSourceError as exc:
                if attempt > retries:
                    raise exc.gave_up(attempt) from None
                delay = backoff * 2 ** (attempt - 1)
                # a failure with a hint (no connection at all: offline?) says what to do from its first warning on
                what = str(exc) if exc.hint else f"download of {redact(url)} failed ({exc.reason})"
                log.warning("%s; retry %d/%d in %.1fs", what, attempt, retries, delay)
                time.sleep(delay)
    path = _local_path(url)
    if not os.path.exists(path):
        raise MonthNotPublished(f"{path} does not exist: the month is not in the mirror; check [taxi] source")
    shutil.copyfile(path, dest)


def _local_path(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url


def _fetch_s3(url: str, dest: str) -> None:
    """Copy an s3:// object (a team mirror of the TLC files) to a local path."""
    client, shown = storage.s3_client(), redact(url)
    with storage.s3_errors_named(client, shown):
        if not client.exists(url):
            raise MonthNotPublished(f"{shown} does not exist: the month is not in the S3 mirror; check [taxi] source")
        client.get(url, dest)


def _fetch_http(url: str, dest: str, timeout: float, progress: Progress | None) -> None:
    shown = redact(url)
    try:
        # identity: the file's own bytes, so Content-Length counts exactly what is written (a server that gzips
        # every type would otherwise send a compressed length for a decompressed body)
        with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code in NOT_PUBLISHED:
                why = ", or the source denies access" if resp.status_code == 403 else " (or not in the mirror)"
                raise MonthNotPublished(f"HTTP {resp.status_code} for {shown}: the month is not published at the "
                                        f"source{why}")
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientSourceError(f"HTTP {resp.status_code} from {shown}", f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise DataError(f"HTTP {resp.status_code} {resp.reason} for {shown}: check [taxi] source")
            total = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
            done = 0
            with open(dest, "wb") as out:
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except requests.ConnectionError as exc:
        reason = _unreachable_reason(exc)
        if reason:
            host = urlparse(url).hostname
            raise SourceUnreachable(f"cannot reach {host} for {shown} ({reason})", reason,
                                    SourceUnreachable.HINT) from None
        raise TransientSourceError(f"{type(exc).__name__} while reading {shown}: {redact_text(str(exc), url)}",
                                   type(exc).__name__) from None
    except (requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise TransientSourceError(f"{type(exc).__name__} while reading {shown}: {redact_text(str(exc), url)}",
                                   type(exc).__name__) from None
    if total is not None and done != total:
        raise TransientSourceError(f"short body from {shown}: {done} of {total} bytes",
                                   f"short body, {done} of {total} bytes")


def _unreachable_reason(exc: requests.ConnectionError) -> str | None:
    """A few words when no connection was made at all (name resolution, refused, unreachable); None otherwise."""
    import urllib3.exceptions

    cause = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(cause, urllib3.exceptions.NameResolutionError):
        return "name resolution failed"
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return str(cause).rsplit(": ", 1)[-1]  # e.g. "[Errno 111] Connection refused"
    return None


