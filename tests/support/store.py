"""Files in a test's store, found by taxi.layout's templates: a field left out (a key, say) matches any value."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from taxi import layout


class _AnyValue(dict):
    def __missing__(self, field: str) -> str:
        return "*"


def pattern(template: str, **fields: str) -> str:
    """`template` with `fields` filled in and every other field a `*` wildcard."""
    return template.format_map(_AnyValue(fields))


def one_file(store: Path, template: str, **fields: str) -> Path:
    """The one file under `store` at `template` (fields left out match any value)."""
    found = sorted(store.glob(pattern(template, **fields)))
    assert len(found) == 1, f"expected one {pattern(template, **fields)} under {store}, found {found}"
    return found[0]


def run_file(store: Path, name: str, color: str = "green", ym: str = "2021-01") -> Path:
    """A file of the one run folder of `color` and `ym` under `store`."""
    return one_file(store, layout.RUN, color=color, ym=ym, name=name)


def match(paths: list[str], patterns: list[str]) -> bool:
    """Whether each relative path matches one of `patterns` and each pattern one path: the same files."""
    return len(paths) == len(patterns) and all(
        sum(fnmatch.fnmatchcase(path, p) for path in paths) == 1 for p in patterns)


RAW_FIELDS = ["PULocationID", "DOLocationID", "trip_distance", "lpep_pickup_datetime"]


def raw_rows(cleaned):
    """Cleaned green trips as a month's raw rows give them to a model: the pickup time under its TLC name."""
    return cleaned.rename(columns={"pickup_datetime": "lpep_pickup_datetime"})[RAW_FIELDS]
