"""Corrupted TLC months, made from real files the way a changed feed would break them: for the data-check and
drift tests and for bench/drift.py, which measures where the limits fall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SEED = 7


def _with(table: pa.Table, name: str, values) -> pa.Table:
    column = table.schema.get_field_index(name)
    return table.set_column(column, table.schema.field(name), pa.array(values, table.schema.field(name).type))


def kilometres(table: pa.Table) -> pa.Table:
    """trip_distance in kilometres instead of miles: every value plausible, the distribution moved."""
    return _with(table, "trip_distance", pc.multiply(table["trip_distance"], 1.609344))


def remapped_zones(table: pa.Table) -> pa.Table:
    """Zone ids remapped by a permutation of 1..265: every id valid, the wrong places."""
    mapping = np.arange(0, 266)
    mapping[1:] = np.random.default_rng(SEED).permutation(np.arange(1, 266))
    for name in ("PULocationID", "DOLocationID"):
        ids = table[name].to_numpy(zero_copy_only=False)
        known = (ids >= 1) & (ids <= 265)
        table = _with(table, name, np.where(known, mapping[np.clip(ids, 0, 265).astype(int)], ids))
    return table


def distances_out_of_range(table: pa.Table, share: float = 0.2) -> pa.Table:
    """A share of the rows with distances a thousand times too large (feet, say)."""
    hit = np.random.default_rng(SEED).random(table.num_rows) < share
    distance = table["trip_distance"].to_numpy(zero_copy_only=False)
    return _with(table, "trip_distance", np.where(hit, distance * 1000, distance))


def most_rows_lost(table: pa.Table, share: float = 0.7) -> pa.Table:
    """A share of the rows with a dropoff at the pickup (a feed that lost its dropoff times): cleaning drops them."""
    hit = np.random.default_rng(SEED).random(table.num_rows) < share
    prefix = "lpep" if "lpep_pickup_datetime" in table.schema.names else "tpep"
    pickup, dropoff = table[f"{prefix}_pickup_datetime"], table[f"{prefix}_dropoff_datetime"]
    return _with(table, f"{prefix}_dropoff_datetime", pc.if_else(pa.array(hit), pickup, dropoff))


CORRUPTIONS = {"kilometres": kilometres, "remapped-zones": remapped_zones,
               "distances-out-of-range": distances_out_of_range, "most-rows-lost": most_rows_lost}


def write_corrupted(source: Path, dest: Path, kind: str) -> None:
    """`source` (a TLC parquet file) corrupted as `kind` says, written to `dest`."""
    pq.write_table(CORRUPTIONS[kind](pq.read_table(source)), dest)
