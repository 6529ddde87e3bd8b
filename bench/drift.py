"""Where the data checks and the drift limits fall: real consecutive months against corrupted ones.

    scripts/bench-drift [--source-dir ../shared/data/tlc] [--sample-rows 8000]

For each real training month with its next month (green 2021-01 -> 02, 2023-01 -> 02) it cleans and checks the
next month as it is and corrupted each way tests/support/corrupt.py knows, and measures its drift from the
training month; also the two real months a year apart. With --sample-rows, on samples of that many raw rows (as the
tests use). Prints a markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from taxi import checks, data, drift
from tests.support.corrupt import CORRUPTIONS
from tests.support.paths import TLC_DIR

log = logging.getLogger(__name__)

PAIRS = (("2021-01", "2021-02"), ("2023-01", "2023-02"), ("2021-01", "2023-01"))


def cleaned(path: Path, ym: str) -> tuple[object, str]:
    """(the cleaned month, "pass" or the check that failed)."""
    trips, stats = data.clean_trips(data.read_trips(path, "green"), "green", what=ym)
    year, month = map(int, ym.split("-"))
    try:
        checks.check_month(trips, stats, year, month, checks.CheckSettings(), ym)
    except checks.CheckFailed as failed:
        return trips, str(failed).split("check failed: ")[-1].split(" (at most")[0]
    return trips, "pass"


def measure(source_dir: Path, sample_rows: int | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="taxi-bench-drift-") as tmp:
        def month_file(ym: str, kind: str | None = None) -> Path:
            table = pq.read_table(source_dir / data.tlc_filename("green", *map(int, ym.split("-"))))
            if sample_rows:
                table = table.take(np.sort(np.random.default_rng(42).choice(table.num_rows, sample_rows,
                                                                            replace=False)))
            if kind:
                table = CORRUPTIONS[kind](table)
            path = Path(tmp) / f"{ym}-{kind}.parquet"
            pq.write_table(table, path)
            return path

        for reference_ym, ym in PAIRS:
            reference, _ = cleaned(month_file(reference_ym), reference_ym)
            for kind in (None, *CORRUPTIONS) if ym.endswith("-02") else (None,):
                trips, check = cleaned(month_file(ym, kind), ym)
                measures = drift.compare(trips, reference, drift.DriftSettings())
                rows.append({"month": ym, "reference": reference_ym, "kind": kind or "real", "check": check,
                             **{m.feature: round(m.distance, 4) for m in measures},
                             "held": [m.feature for m in measures if m.over]})
    return rows


def table(rows: list[dict]) -> str:
    features = [*drift.ZONES, *drift.NUMERIC, drift.ROWS]
    lines = ["| month vs reference | kind | checks | " + " | ".join(features) + " | held by drift |",
             "|---|---|---|" + "---:|" * len(features) + "---|"]
    for r in rows:
        lines.append(f"| {r['month']} vs {r['reference']} | {r['kind']} | {r['check']} | "
                     + " | ".join(f"{r[f]:.3f}" for f in features) + f" | {', '.join(r['held']) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", type=Path, default=TLC_DIR, help="folder of the real TLC files")
    parser.add_argument("--sample-rows", type=int, help="measure on samples of this many raw rows per month")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = measure(args.source_dir, args.sample_rows)
    print(table(rows))
    print(json.dumps({"sample_rows": args.sample_rows, "rows": rows, "limits": vars(drift.DriftSettings()) |
                      vars(checks.CheckSettings())}))


if __name__ == "__main__":
    main()
