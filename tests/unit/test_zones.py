"""taxi/zones.py: zone ids as the same strings whatever their dtype, and the pickup-dropoff pair."""

from __future__ import annotations

import pandas as pd

from taxi.zones import pu_do, zone_str


def test_zone_ids_of_any_dtype_are_integer_strings():
    for ids in (pd.Series([43, 151]), pd.Series([43.0, 151.0]), pd.Series(["43", "151"]),
                pd.Series([43, 151], dtype="Int32")):
        assert zone_str(ids).tolist() == ["43", "151"], ids.dtype
    assert pu_do(pd.Series(["43", "1"]), pd.Series(["151", "265"])).tolist() == ["43_151", "1_265"]
