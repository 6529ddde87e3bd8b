"""`python -m taxi.monthly COLOR [--as-of YYYY-MM-DD] [--score] [luigi options]`, what scripts/run-monthly and
systemd/taxi-train@.service run: train and register the newest month published at `[taxi] source`; with
`--score` (scripts/score, systemd/taxi-score@.service), score the newest published month with the champion.

The exit status is Luigi's `[retcode]` one (luigi.cfg), so a failed or missing task fails the unit; no
trainable (or published) month exits with `[retcode] missing_data`; an MLflow server that is down or refuses the
login, with `[retcode] task_failed` before anything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

import luigi.retcodes

from taxi import config, data, schedule, source
from taxi.tracking import TrackingUnavailable, check_login
from taxi.urls import redact

log = logging.getLogger("taxi.monthly")  # not __name__: that is "__main__" under python -m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run-monthly", description=__doc__.split("\n\n")[0])
    parser.add_argument("color", choices=data.COLORS)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date.today(),
                        help="choose the month as a run on this date would have (default: today)")
    parser.add_argument("--score", action="store_true",
                        help="score the newest published month with the champion instead of training")
    args, luigi_args = parser.parse_known_args(argv)
    config.load()
    config.configure_logging()
    mlflow_settings = config.MlflowConfig()
    try:  # a wrong login fails here, in one line, before anything is downloaded
        check_login(mlflow_settings.uri, mlflow_settings.experiment)
    except TrackingUnavailable as exc:
        log.error("%s", exc)
        sys.exit(luigi.retcodes.retcode().task_failed)
    where = config.TaxiConfig().source
    if args.score:
        found = schedule.newest_published_month(args.color, where, args.as_of, source.published)
        wanted, task = "month published", "ScoreMonthly"
    else:
        found = schedule.newest_trainable_month(args.color, where, args.as_of, source.published)
        wanted, task = "month with its following month published", "RegisterMonth"
    if found is None:
        log.error("no %s %s at %s among the %d newest candidates as of %s", args.color, wanted, redact(where),
                  schedule.LOOKBACK_MONTHS, args.as_of)
        sys.exit(luigi.retcodes.retcode().missing_data)
    month = data.ym(*found)
    log.info("newest %s %s month as of %s: %s", "published" if args.score else "trainable", args.color, args.as_of,
             month)
    luigi.retcodes.run_with_retcodes(["--module", "taxi.tasks", task, "--color", args.color, "--month", month,
                                      *luigi_args])


if __name__ == "__main__":
    main()
