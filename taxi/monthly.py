"""`python -m taxi.monthly COLOR [--as-of YYYY-MM-DD] [luigi options]`, what scripts/run-monthly and
systemd/taxi-train@.service run: train and register the newest month published at `[taxi] source`.

The exit status is Luigi's `[retcode]` one (luigi.cfg), so a failed or missing task fails the unit; no
trainable month exits with `[retcode] missing_data`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

import luigi.retcodes

from taxi import config, data, schedule, source
from taxi.urls import redact

log = logging.getLogger("taxi.monthly")  # not __name__: that is "__main__" under python -m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run-monthly", description=__doc__.split("\n\n")[0])
    parser.add_argument("color", choices=data.COLORS)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date.today(),
                        help="choose the month as a run on this date would have (default: today)")
    args, luigi_args = parser.parse_known_args(argv)
    config.load()
    config.configure_logging()
    where = config.TaxiConfig().source
    found = schedule.newest_trainable_month(args.color, where, args.as_of, source.published)
    if found is None:
        log.error("no %s month with its following month published at %s among the %d newest candidates as of %s",
                  args.color, redact(where), schedule.LOOKBACK_MONTHS, args.as_of)
        sys.exit(luigi.retcodes.retcode().missing_data)
    month = data.ym(*found)
    log.info("newest trainable %s month as of %s: %s", args.color, args.as_of, month)
    luigi.retcodes.run_with_retcodes(["--module", "taxi.tasks", "RegisterMonth", "--color", args.color,
                                      "--month", month, *luigi_args])


if __name__ == "__main__":
    main()
