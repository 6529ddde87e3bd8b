"""Zone ids as categories: the one rule for cleaning and serving (pure: no luigi; part of the served model's code)."""

from __future__ import annotations

import pandas as pd


def zone_str(zone: pd.Series) -> pd.Series:
    """Zone ids as strings whatever their integer/float/string dtype ('43', never '43.0')."""
    if pd.api.types.is_float_dtype(zone):
        zone = zone.astype("Int64")
    return zone.astype(str)


def pu_do(pu: pd.Series, do: pd.Series) -> pd.Series:
    """The pickup-dropoff pair feature from zone-id strings: '43_151'."""
    return pu + "_" + do
