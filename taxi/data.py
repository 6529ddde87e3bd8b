"""TLC months as data: which months can exist, where a month's file is, the raw file's checks and the cleaning rules
(pure: no luigi)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from taxi.columns import DATETIME_PREFIX, PICKUP
from taxi.zones import pu_do, zone_str

log = logging.getLogger(__name__)

COLORS = ("green", "yellow")
FIRST_YEAR = 2009
TLC_SOURCE = "https://d37ci6vzurychx.cloudfront.net/trip-data/{color}_tripdata_{year}-{month:02d}.parquet"
TLC_FILENAME = "{color}_tripdata_{ym}.parquet"  # the TLC's own file name of a month, kept in mirrors and the store
MIN_DURATION, MAX_DURATION = 1.0, 60.0
KNOWN_ZONES = (1, 265)
TRIP_FIELDS = (PICKUP, "PULocationID", "DOLocationID", "trip_distance", "duration")  # what identifies a trip
GATE_BUCKETS = 1_000_000
CHUNK = 1 << 20


class DataError(ValueError):
    """A month's data cannot be used; the message says what is wrong and what to do."""


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


def ym(year: int, month: int) -> str:
    """A month as YYYY-MM."""
    return f"{year}-{month:02d}"


def tlc_filename(color: str, year: int, month: int) -> str:
    return TLC_FILENAME.format(color=color, ym=ym(year, month))


def source_url(source: str, color: str, year: int, month: int) -> str:
    """Resolve `[taxi] source` (a URL template with {color}/{year}/{month}, or a folder/URL prefix)."""
    if "{" in source:
        return source.format(color=color, year=year, month=month)
    if urlparse(source).scheme in ("http", "https", "file", "s3"):
        return f"{source.rstrip('/')}/{tlc_filename(color, year, month)}"
    return os.path.join(os.path.abspath(source), tlc_filename(color, year, month))


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
        return dropped_share(self.rows_raw, self.rows_clean)

    def record(self) -> dict[str, int]:
        """The counts as the month's stats JSON records them."""
        return asdict(self)


def dropped_share(rows_raw: int, rows_clean: int) -> float:
    """The share of a month's rows that cleaning dropped (all of them when there were none)."""
    return 1 - rows_clean / rows_raw if rows_raw else 1.0


def clean_trips(df: pd.DataFrame, color: str, *, what: str = "month") -> tuple[pd.DataFrame, CleanStats]:
    """Duration in minutes kept in [1, 60], zone ids as strings, `PU_DO` and the pickup time; no rows left is an
    error. Whether the month is plausible is taxi.checks' question."""
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
                        "duration": duration[kept], "PU_DO": pu_do(pu, do),
                        PICKUP: pd.Series(pickup.array.take(kept))})

    unknown = int((~pu_ids.between(*KNOWN_ZONES)).sum() + (~do_ids.between(*KNOWN_ZONES)).sum())
    if unknown:
        log.warning("%s: %d zone ids outside %d..%d (kept as their own categories)", what, unknown, *KNOWN_ZONES)
    stats = CleanStats(len(df), len(out), dropped_nonfinite, unknown)
    if not len(out):
        raise DataError(f"{what}: no trips left after cleaning (of {len(df)} rows none has a duration in "
                        f"{MIN_DURATION:g}..{MAX_DURATION:g} min and a finite distance); the file is unusable")
    return out, stats


def gate_rows(trips: pd.DataFrame, share: float) -> np.ndarray:
    """Which cleaned trips of a validation month are gate rows (True) rather than selection rows: decided by a
    stable hash of each trip's own fields, so the same trips on every run and host, and no random state."""
    digest = pd.util.hash_pandas_object(trips[list(TRIP_FIELDS)], index=False).to_numpy()
    return digest % GATE_BUCKETS < round(share * GATE_BUCKETS)
