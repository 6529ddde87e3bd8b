"""Data checks on a cleaned month, declared as a pandera schema: a month that fails one stops before anything is
trained on it (pure: no luigi).

Real months have a few odd rows (a trip from another month, a 100,000-mile distance: under 0.1 % each), so a
check fails only when more than a set share of the rows fail it. docs/pipeline.md "Data checks" has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

from taxi.data import KNOWN_ZONES, PICKUP, CleanStats, DataError

DROPPED = "rows dropped by cleaning"


class CheckFailed(DataError):
    """A cleaned month fails a data check; the message names the column, the check and the share of rows."""


@dataclass(frozen=True)
class CheckSettings:
    """How much a month may deviate; these defaults are the pipeline's (CleanMonth's parameters take them)."""

    max_failing_share: float = 0.01  # of the cleaned rows, per check
    max_drop_share: float = 0.2  # of the raw rows, dropped by cleaning
    max_distance: float = 100.0  # miles
    pickup_slack_days: float = 1.0  # pickups this long before or after the file's month still count as in it

    def validate(self) -> None:
        for name in ("max_failing_share", "max_drop_share"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"[CleanMonth] {name} must be at least 0 and below 1, got {getattr(self, name)}")
        if self.max_distance <= 0 or self.pickup_slack_days < 0:
            raise ValueError(f"[CleanMonth] max_distance must be above 0 and pickup_slack_days at least 0, got "
                             f"{self.max_distance} and {self.pickup_slack_days}")


@dataclass(frozen=True)
class Finding:
    """How many of a month's rows fail one check, and how many may."""

    check: str
    failing: int
    rows: int
    max_share: float

    @property
    def share(self) -> float:
        return self.failing / self.rows if self.rows else 1.0

    @property
    def failed(self) -> bool:
        return self.share > self.max_share

    def text(self) -> str:
        return f"{self.check}: {100 * self.share:.1f}% of {self.rows:,} rows (at most {100 * self.max_share:g}% may)"


def schema(year: int, month: int, settings: CheckSettings) -> pa.DataFrameSchema:
    """What a cleaned month of `year`-`month` must look like: columns, types and plausible values."""
    start = pd.Timestamp(year, month, 1)
    slack = pd.Timedelta(days=settings.pickup_slack_days)
    zones = [str(zone) for zone in range(KNOWN_ZONES[0], KNOWN_ZONES[1] + 1)]
    zone = pa.Check.isin(zones, error=f"zone id in {KNOWN_ZONES[0]}..{KNOWN_ZONES[1]}")
    in_month = pa.Check.in_range(start - slack, start + pd.offsets.MonthBegin(1) + slack,
                                 error=f"in the file's month ± {settings.pickup_slack_days:g} days")
    return pa.DataFrameSchema({
        "PULocationID": pa.Column(str, zone),
        "DOLocationID": pa.Column(str, zone),
        "trip_distance": pa.Column(float, pa.Check.in_range(0, settings.max_distance,
                                                            error=f"in 0..{settings.max_distance:g} miles")),
        "duration": pa.Column(float),
        PICKUP: pa.Column(pa.DateTime, in_month),
    })


def check_month(trips: pd.DataFrame, stats: CleanStats, year: int, month: int, settings: CheckSettings,
                what: str) -> list[Finding]:
    """Every check's finding on a cleaned month; CheckFailed (one line: the column, the check, the share of rows)
    when one fails."""
    declared = schema(year, month, settings)
    failing = {f"{column} {check.error}": 0 for column, spec in declared.columns.items() for check in spec.checks}
    try:
        declared.validate(trips, lazy=True)
    except pa.errors.SchemaErrors as errors:
        for (column, check), cases in errors.failure_cases.groupby(["column", "check"], sort=True, dropna=False):
            if cases["index"].isna().all():  # the column as a whole: of another type, or missing (no column then)
                name = column if isinstance(column, str) else ", ".join(cases["failure_case"].astype(str))
                raise CheckFailed(f"{what}: column {name} fails {check}: the month's schema is not the one "
                                  f"cleaning makes") from None
            failing[f"{column} {check}"] = cases["index"].nunique()
    findings = [Finding(DROPPED, stats.rows_raw - stats.rows_clean, stats.rows_raw, settings.max_drop_share),
                *(Finding(check, count, len(trips), settings.max_failing_share) for check, count in failing.items())]
    failed = [finding for finding in findings if finding.failed]
    if failed:
        raise CheckFailed(f"{what}: check failed: {failed[0].text()}; the month's data looks wrong: fix the source, "
                          f"or change the [CleanMonth] check settings")
    return findings
