"""How far a month's trips drifted from a reference month's, feature by feature (pure: no luigi).

As TFX's ExampleValidator does: the L-infinity distance between the two months' category frequencies for the
zones, the Jensen-Shannon distance between their histograms (over the reference's deciles) for distance and
duration; and the ratio of their row counts. docs/pipeline.md "Drift" has the figures behind the limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ZONES = ("PULocationID", "DOLocationID")
NUMERIC = ("trip_distance", "duration")
ROWS = "rows"
BINS = 10


@dataclass(frozen=True)
class DriftSettings:
    """How far a month may drift before its model is held; these defaults are the pipeline's (RegisterModel's
    parameters take them)."""

    max_zone_distance: float = 0.05
    max_numeric_distance: float = 0.1
    min_rows_ratio: float = 0.5

    def validate(self) -> None:
        for name in ("max_zone_distance", "max_numeric_distance"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"[RegisterModel] {name} must be above 0 and at most 1, got {getattr(self, name)}")
        if self.min_rows_ratio < 0:
            raise ValueError(f"[RegisterModel] min_rows_ratio must be at least 0, got {self.min_rows_ratio}")


@dataclass(frozen=True)
class Measure:
    """One feature's distance from the reference month, and the limit it is held to."""

    feature: str
    method: str
    distance: float
    limit: float

    @property
    def over(self) -> bool:
        return self.distance < self.limit if self.feature == ROWS else self.distance > self.limit

    def text(self) -> str:
        relation = ("below" if self.feature == ROWS else "above") if self.over else "within"
        return f"{self.feature} {self.method} {self.distance:.3f} {relation} {self.limit:g}"


def linf(month: pd.Series, reference: pd.Series) -> float:
    """The largest difference between the two columns' category frequencies."""
    p, q = month.value_counts(normalize=True), reference.value_counts(normalize=True)
    both = p.index.union(q.index)
    return float((p.reindex(both, fill_value=0) - q.reindex(both, fill_value=0)).abs().max())


def jensen_shannon(month: pd.Series, reference: pd.Series, bins: int = BINS) -> float:
    """The Jensen-Shannon distance (base 2: 0 same, 1 disjoint) between the two columns' histograms over the
    reference's quantile bins."""
    from scipy.spatial.distance import jensenshannon  # scipy.spatial loads slowly: only when measuring

    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    return float(jensenshannon(np.histogram(month, edges)[0], np.histogram(reference, edges)[0], base=2))


def compare(month: pd.DataFrame, reference: pd.DataFrame, settings: DriftSettings) -> list[Measure]:
    """Every feature's drift of a cleaned month from a cleaned reference month."""
    return [*(Measure(c, "L-inf", linf(month[c], reference[c]), settings.max_zone_distance) for c in ZONES),
            *(Measure(c, "JS", jensen_shannon(month[c], reference[c]), settings.max_numeric_distance)
              for c in NUMERIC),
            Measure(ROWS, "ratio", len(month) / len(reference), settings.min_rows_ratio)]
