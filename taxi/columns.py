"""Column names shared by cleaning, features and serving, declared once (pure: no luigi; part of the served model's
code)."""

from __future__ import annotations

DATETIME_PREFIX = {"green": "lpep", "yellow": "tpep"}  # the TLC files' own prefix of each color's time columns
PICKUP = "pickup_datetime"  # the cleaned trips' pickup time, whatever the color's own column name
PU, DO = "PULocationID", "DOLocationID"
PU_DO = "PU_DO"  # the pickup-dropoff zone pair, '43_151'
DISTANCE = "trip_distance"
DURATION = "duration"  # minutes: the target


def pickup_column(color: str) -> str:
    """The TLC files' pickup time column of a color: lpep_pickup_datetime for green, tpep_ for yellow."""
    return f"{DATETIME_PREFIX[color]}_{PICKUP}"
