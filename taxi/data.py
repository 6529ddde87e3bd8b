"""Where TLC months come from, how they are fetched, checked and cleaned (pure: no luigi)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import requests

from taxi.urls import redact, redact_text

log = logging.getLogger(__name__)

COLORS = ("green", "yellow")
FIRST_YEAR = 2009
TLC_SOURCE = "https://d37ci6vzurychx.cloudfront.net/trip-data/{color}_tripdata_{year}-{month:02d}.parquet"
DATETIME_PREFIX = {"green": "lpep", "yellow": "tpep"}
MIN_DURATION, MAX_DURATION = 1.0, 60.0
KNOWN_ZONES = (1, 265)
CHUNK = 1 << 20

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


class DataError(ValueError):
    """A month's data cannot be used; the message says what is wrong and what to do."""


class MonthNotPublished(DataError):
    """The source has no file for this month (HTTP 404 / missing file)."""


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


def validate_month(color: str, year: int, month: int, *, needs_next_month: bool = False,
                   today: dt.date | None = None) -> None:
    """Reject a color/year/month that cannot have data (and, for training, a validation month not yet over)."""
    today = today or dt.date.today()
    if color not in COLORS:
        raise ValueError(f"unknown color {color!r}: use one of {', '.join(COLORS)}")
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    if not FIRST_YEAR <= year <= today.year:
        raise ValueError(f"year must be {FIRST_YEAR}..{today.year}, got {year}")
    if (year, month) > (today.year, today.month):
        raise ValueError(f"month {year}-{month:02d} has not happened yet")
    valid_year, valid_month = next_month(year, month)
    if needs_next_month and (valid_year, valid_month) >= (today.year, today.month):
        raise ValueError(
            f"validation month {valid_year}-{valid_month:02d} (the month after {year}-{month:02d}) "
            f"is not over yet, so it has no data: train on an earlier month"
        )


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def tlc_filename(color: str, year: int, month: int) -> str:
    return f"{color}_tripdata_{year}-{month:02d}.parquet"


def source_url(source: str, color: str, year: int, month: int) -> str:
    """Resolve `[taxi] source` (a URL template with {color}/{year}/{month}, or a folder/URL prefix)."""
    if "{" in source:
        return source.format(color=color, year=year, month=month)
    if urlparse(source).scheme in ("http", "https", "file", "s3"):
        return f"{source.rstrip('/')}/{tlc_filename(color, year, month)}"
    return os.path.join(os.path.abspath(source), tlc_filename(color, year, month))


def fetch(url: str, dest: str, *, retries: int = 4, backoff: float = 2.0, timeout: float = 30.0,
          progress: Progress | None = None) -> None:
    """Copy `url` (http(s), file:// or a local path) to `dest`, retrying transient failures.

    Messages and logs name the URL without its credentials (taxi.urls.redact)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
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
    path = unquote(parsed.path) if parsed.scheme == "file" else url
    if not os.path.exists(path):
        raise MonthNotPublished(f"{path} does not exist: the month is not in the mirror; check [taxi] source")
    shutil.copyfile(path, dest)


def _fetch_http(url: str, dest: str, timeout: float, progress: Progress | None) -> None:
    shown = redact(url)
    try:
        # identity: the file's own bytes, so Content-Length counts exactly what is written (a server that gzips
        # every type would otherwise send a compressed length for a decompressed body)
        with requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code == 404:
                raise MonthNotPublished(
                    f"HTTP 404 for {shown}: the month is not published at the source (or not in the mirror)"
                )
            if resp.status_code == 403:  # S3 behind CloudFront answers 403 for a missing key when listing is denied
                raise MonthNotPublished(
                    f"HTTP 403 for {shown}: the month is not published at the source, or the source denies access"
                )
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


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def required_columns(color: str) -> list[str]:
    prefix = DATETIME_PREFIX[color]
    return [f"{prefix}_pickup_datetime", f"{prefix}_dropoff_datetime", "PULocationID", "DOLocationID",
            "trip_distance"]


def check_raw(path: str, color: str, what: str) -> int:
    """Check that `path` is a parquet file with the columns cleaning needs; return its row count."""
    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for non-parquet / truncated files
        raise DataError(f"{what} is not a readable parquet file ({exc}); is the source serving an error page?") from exc
    missing = sorted(set(required_columns(color)) - set(meta.schema_arrow.names))
    if missing:
        raise DataError(f"{what} lacks required column(s) {', '.join(missing)} for {color} trips")
    return meta.metadata.num_rows


def read_trips(source, color: str) -> pd.DataFrame:
    """Read only the columns cleaning needs from a parquet path or file object."""
    return pd.read_parquet(source, columns=required_columns(color))


@dataclass(frozen=True)
class CleanStats:
    rows_raw: int
    rows_clean: int
    dropped_nonfinite_distance: int
    unknown_zone_rows: int

    @property
    def dropped_share(self) -> float:
        return 1 - self.rows_clean / self.rows_raw if self.rows_raw else 1.0


def clean_trips(df: pd.DataFrame, color: str, *, what: str = "month",
                max_drop_share: float = 0.2) -> tuple[pd.DataFrame, CleanStats]:
    """Duration in minutes kept in [1, 60], zone ids as strings and `PU_DO`; no rows left is an error."""
    missing = sorted(set(required_columns(color)) - set(df.columns))
    if missing:
        raise DataError(f"{what} lacks required column(s) {', '.join(missing)} for {color} trips")
    prefix = DATETIME_PREFIX[color]
    pickup, dropoff = df[f"{prefix}_pickup_datetime"], df[f"{prefix}_dropoff_datetime"]
    if not (pd.api.types.is_datetime64_any_dtype(pickup) and pd.api.types.is_datetime64_any_dtype(dropoff)):
        raise DataError(f"{what}: {prefix}_pickup/dropoff_datetime must be timestamps, "
                        f"got {pickup.dtype} and {dropoff.dtype}")
    # timedelta / 1 s is the float division Timedelta.total_seconds() does, so minutes equal the course's exactly
    duration = np.asarray(dropoff - pickup) / np.timedelta64(1, "s") / 60
    distance = pd.to_numeric(df["trip_distance"], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(distance)
    kept = np.flatnonzero((duration >= MIN_DURATION) & (duration <= MAX_DURATION) & finite)
    dropped_nonfinite = int((~finite).sum())
    if dropped_nonfinite:
        log.warning("%s: dropped %d trips with a missing or infinite trip_distance", what, dropped_nonfinite)

    # positional takes on the arrays: boolean indexing of the Series would also build a 3 M-row index per column
    pu_ids, do_ids = (pd.Series(df[column].array.take(kept)) for column in ("PULocationID", "DOLocationID"))
    pu, do = zone_str(pu_ids), zone_str(do_ids)
    out = pd.DataFrame({"PULocationID": pu, "DOLocationID": do, "trip_distance": distance[kept],
                        "duration": duration[kept], "PU_DO": pu_do(pu, do)})

    unknown = int((~pu_ids.between(*KNOWN_ZONES)).sum() + (~do_ids.between(*KNOWN_ZONES)).sum())
    if unknown:
        log.warning("%s: %d zone ids outside %d..%d (kept as their own categories)", what, unknown, *KNOWN_ZONES)
    stats = CleanStats(len(df), len(out), dropped_nonfinite, unknown)
    if not len(out):
        raise DataError(f"{what}: no trips left after cleaning (of {len(df)} rows none has a duration in "
                        f"{MIN_DURATION:g}..{MAX_DURATION:g} min and a finite distance); the file is unusable")
    if stats.dropped_share > max_drop_share:
        log.warning("%s: cleaning dropped %.1f%% of %d rows (more than the %.0f%% allowed by "
                    "[CleanMonth] max_drop_share)", what, 100 * stats.dropped_share, len(df), 100 * max_drop_share)
    return out, stats


def zone_str(zone: pd.Series) -> pd.Series:
    """Zone ids as strings whatever their integer/float/string dtype ('43', never '43.0'): the one rule for cleaning
    and serving."""
    if pd.api.types.is_float_dtype(zone):
        zone = zone.astype("Int64")
    return zone.astype(str)


def pu_do(pu: pd.Series, do: pd.Series) -> pd.Series:
    """The pickup-dropoff pair feature from zone-id strings: '43_151'."""
    return pu + "_" + do
