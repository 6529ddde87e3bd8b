"""Which month a scheduled run trains: the newest month whose TLC file and the following month's file are both
published at the source; and which month a scheduled scoring run scores: the newest month published (pure: no
luigi; source.published is the probe).

The TLC publishes a month about two months after it ends, so on 2024-05-20 the newest month with a finished
validation month is 2024-03 (validated on 2024-04), and its files may well not be out yet.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from taxi import data
from taxi.urls import redact

log = logging.getLogger(__name__)

LOOKBACK_MONTHS = 12  # training months tried, newest first, before giving up


def previous_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def newest_trainable_month(color: str, source: str, today: dt.date, is_published: Callable[[str], bool],
                           lookback_months: int = LOOKBACK_MONTHS) -> tuple[int, int] | None:
    """The newest (year, month) whose validation month is over and whose two files `is_published` at `source`;
    None when none of the `lookback_months` newest candidates qualifies. Each URL is probed at most once."""
    published = _prober(color, source, is_published)
    # the validation month first: it is the newer file, the likelier one to be missing
    return _newest(previous_month(*previous_month(today.year, today.month)), lookback_months,
                   lambda year, month: published(*data.next_month(year, month)) and published(year, month))


def newest_published_month(color: str, source: str, today: dt.date, is_published: Callable[[str], bool],
                           lookback_months: int = LOOKBACK_MONTHS) -> tuple[int, int] | None:
    """The newest (year, month) that is over and whose file `is_published` at `source`: the month a scheduled
    scoring run scores. None when none of the `lookback_months` newest months is."""
    return _newest(previous_month(today.year, today.month), lookback_months,
                   _prober(color, source, is_published))


def _newest(start: tuple[int, int], lookback_months: int,
            qualifies: Callable[[int, int], bool]) -> tuple[int, int] | None:
    """The first of `lookback_months` months from `start` backwards (not before FIRST_YEAR) that `qualifies`."""
    year, month = start
    for _ in range(lookback_months):
        if year < data.FIRST_YEAR:
            break
        if qualifies(year, month):
            return year, month
        year, month = previous_month(year, month)
    return None


def _prober(color: str, source: str, is_published: Callable[[str], bool]) -> Callable[[int, int], bool]:
    """`published(year, month)` for the color's files at `source`: each URL probed once, and its answer logged."""
    answers: dict[str, bool] = {}

    def published(year: int, month: int) -> bool:
        url = data.source_url(source, color, year, month)
        if url not in answers:
            answers[url] = is_published(url)
            log.info("%s %s", redact(url), "is published" if answers[url] else "is not published")
        return answers[url]
    return published
