"""Tasks for operating the pipeline over time: a month's source file as an external dependency, the
one-parameter adapters RangeMonthly drives (scripts/backfill, scripts/run-monthly, scripts/score), and a rollback of
the champion (scripts/champion)."""

from __future__ import annotations

import luigi
# registers RangeMonthly, so `luigi --module taxi.tasks RangeMonthly --of RegisterMonth ...` finds it
from luigi.tools.range import RangeMonthly  # noqa: F401

from taxi import data, source
from taxi.config import TaxiConfig
from taxi.pipeline.base import connect_registry
from taxi.pipeline.model import RegisterModel
from taxi.pipeline.scoring import ScoreMonth


class SourceFile(luigi.ExternalTask):
    """One month's TLC file at `[taxi] source`: a missing dependency in Luigi's summary until it is published."""

    color = luigi.Parameter(default="green", description="green or yellow")
    year = luigi.IntParameter()
    month = luigi.IntParameter()

    def complete(self) -> bool:
        return source.published(data.source_url(TaxiConfig().source, self.color, self.year, self.month))


class RegisterMonth(luigi.Task):
    """RegisterModel for a training month given as one month parameter, the adapter RangeMonthly needs. It waits for
    both source files, so a month not published is reported missing rather than failing a download, then runs
    RegisterModel as a dynamic dependency; it is done exactly when that RegisterModel is done."""

    month = luigi.MonthParameter(description="training month, YYYY-MM")  # first: RangeMonthly's parameter
    color = luigi.Parameter(default="green", description="green or yellow")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        data.validate_month(self.color, self.month.year, self.month.month, needs_next_month=True)

    def register_model(self) -> RegisterModel:
        return RegisterModel(color=self.color, year=self.month.year, month=self.month.month)

    def requires(self):
        year, month = self.month.year, self.month.month
        return [SourceFile(color=self.color, year=y, month=m) for y, m in ((year, month), data.next_month(year, month))]

    def complete(self) -> bool:
        return self.register_model().complete()

    def run(self):
        yield self.register_model()


class ScoreMonthly(luigi.Task):
    """ScoreMonth (the month scored with the champion) for a month given as one month parameter, the adapter
    RangeMonthly needs. It waits for the month's source file, so a month not published is reported missing rather
    than failing a download, then runs ScoreMonth as a dynamic dependency; it is done exactly when that is."""

    month = luigi.MonthParameter(description="month to score, YYYY-MM")  # first: RangeMonthly's parameter
    color = luigi.Parameter(default="green", description="green or yellow")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        data.validate_month(self.color, self.month.year, self.month.month)

    def score_month(self) -> ScoreMonth:
        return ScoreMonth(color=self.color, year=self.month.year, month=self.month.month)

    def requires(self):
        return SourceFile(color=self.color, year=self.month.year, month=self.month.month)

    def complete(self) -> bool:
        return self.score_month().complete()

    def run(self):
        yield self.score_month()


class RollBackChampion(luigi.Task):
    """Moves a color's champion alias back (taxi.rollback.roll_back), holding the `mlflow_registry` resource as
    RegisterModel's decision does, so a rollback and a decision never interleave. One task per request
    (`requested`); `move` holds what it did."""

    resources = {"mlflow_registry": 1}
    retry_count = 1  # a refusal is final: disabled at once, so the waiting worker (keep_alive) ends, no retry later
    color = luigi.ChoiceParameter(choices=data.COLORS, description="the color whose champion goes back")
    to = luigi.Parameter(default="", description="the version to go back to; empty: the previous champion")
    reason = luigi.Parameter(description="why, recorded in the alias history")
    who = luigi.Parameter(description="who asked, recorded in the alias history")
    via = luigi.Parameter(description="through what (scripts/champion, the operator page)")
    requested = luigi.Parameter(description="when it was asked for: one task per request")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.move = self.refused = None
        self.done = False

    def complete(self) -> bool:
        """Done once this process's run() moved the alias: a request has no target, the history is its record."""
        return self.done

    def run(self):
        from taxi import rollback

        connect_registry(record=False)
        try:
            self.move = rollback.roll_back(self.color, self.to or None, self.reason, self.who, self.via)
        except rollback.RollbackRefused as exc:
            self.refused = exc
            raise
        self.done = True
