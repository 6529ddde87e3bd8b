"""Synthetic TLC months of any size, bootstrap-resampled from real months (pure: no luigi).

    scripts/make_synthetic_month --color yellow --year 2021 --month 1 --rows 3000000 \
        --source ../shared/data/tlc/green_tripdata_2021-01.parquet out/yellow_tripdata_2021-01.parquet
"""

from __future__ import annotations

import argparse
import calendar
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taxi.data import DATETIME_PREFIX

log = logging.getLogger(__name__)

DEFAULT_ROWS = 3_000_000
GREEN_ONLY_COLUMNS = ("ehail_fee", "trip_type")
YELLOW_ONLY_COLUMNS = {"airport_fee": pa.float64()}
ROW_GROUP_ROWS = 1 << 20


def read_sources(paths: list[str]) -> pa.Table:
    """The source months as one table with datetime columns named `pickup_datetime`/`dropoff_datetime`; types that
    drift between years (int32/int64/double, null/double) are promoted to a common type."""
    tables = [_neutral_names(pq.read_table(path).replace_schema_metadata(None)) for path in paths]
    return pa.concat_tables(tables, promote_options="permissive")


def _neutral_names(table: pa.Table) -> pa.Table:
    """Drop the color's prefix (lpep_/tpep_) from the datetime columns."""
    prefixes = tuple(f"{prefix}_" for prefix in DATETIME_PREFIX.values())
    return table.rename_columns([name.split("_", 1)[1] if name.startswith(prefixes) else name
                                 for name in table.column_names])


def shift_into_month(pickup: np.ndarray, dropoff: np.ndarray, year: int,
                     month: int) -> tuple[np.ndarray, np.ndarray]:
    """Move each pickup to the same offset from the start of (its own month modulo the target month's length),
    and the dropoff with it, so every trip keeps its exact duration."""
    start = np.datetime64(f"{year:04d}-{month:02d}", "us")
    length = np.timedelta64(calendar.monthrange(year, month)[1], "D").astype("timedelta64[us]")
    offset = pickup - pickup.astype("datetime64[M]").astype("datetime64[us]")
    new_pickup = start + offset % length
    return new_pickup, new_pickup + (dropoff - pickup)


def make_month(source: pa.Table, rows: int, color: str, year: int, month: int, seed: int) -> pa.Table:
    """`rows` rows drawn with replacement from `source` (seeded), moved into year-month, named for `color`."""
    picks = np.random.default_rng(seed).integers(0, source.num_rows, size=rows)
    sample = source.take(pa.array(picks))
    pickup, dropoff = shift_into_month(sample["pickup_datetime"].to_numpy(), sample["dropoff_datetime"].to_numpy(),
                                       year, month)
    prefix = DATETIME_PREFIX[color]
    columns = {}
    for name in sample.column_names:
        if name == "pickup_datetime":
            columns[f"{prefix}_pickup_datetime"] = pa.array(pickup)
        elif name == "dropoff_datetime":
            columns[f"{prefix}_dropoff_datetime"] = pa.array(dropoff)
        elif not (color == "yellow" and name in GREEN_ONLY_COLUMNS):
            columns[name] = sample[name]
    if color == "yellow":
        for name, type_ in YELLOW_ONLY_COLUMNS.items():
            columns.setdefault(name, pa.nulls(rows, type_))
    return pa.table(columns)


def write_month(table: pa.Table, path: str) -> None:
    """Write atomically (temporary name, then rename) so a half-written month never looks complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    pq.write_table(table, partial, row_group_size=ROW_GROUP_ROWS)
    os.replace(partial, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a synthetic TLC month by bootstrap-resampling real months.")
    parser.add_argument("output", help="parquet file to write, e.g. dir/yellow_tripdata_2021-01.parquet")
    parser.add_argument("--source", action="append", required=True,
                        help="a real TLC parquet month to resample (repeat for several)")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows to write (default %(default)s)")
    parser.add_argument("--color", choices=sorted(DATETIME_PREFIX), default="green",
                        help="column names to write: lpep_* (green) or tpep_* (yellow)")
    parser.add_argument("--year", type=int, required=True, help="target year")
    parser.add_argument("--month", type=int, choices=range(1, 13), required=True, metavar="1..12",
                        help="target month")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    args = parse_args(argv)
    table = make_month(read_sources(args.source), args.rows, args.color, args.year, args.month, args.seed)
    write_month(table, args.output)
    log.info("wrote %s: %d %s rows for %d-%02d (seed %d)", args.output, args.rows, args.color, args.year,
             args.month, args.seed)


if __name__ == "__main__":
    main()
