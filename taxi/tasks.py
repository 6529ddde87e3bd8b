"""The module `luigi --module taxi.tasks` imports: it reads the project's settings (taxi.config.load), then makes
every task known to Luigi.

    luigi --module taxi.tasks RegisterModel --year 2021 --month 1 [--color green|yellow]
    luigi --module taxi.tasks ScoreMonth --year 2021 --month 2 [--color green|yellow]
"""

from taxi import config

config.load()  # before Luigi builds a task from the command line: the checkout's luigi.cfg under every override
config.configure_logging()

from taxi.pipeline.model import RegisterModel, TrainModel, TuneHyperparams  # noqa: E402
from taxi.pipeline.operations import RangeMonthly, RegisterMonth, ScoreMonthly, SourceFile  # noqa: E402
from taxi.pipeline.prepare import BuildFeatures, CleanMonth, DownloadMonth, load_features  # noqa: E402
from taxi.pipeline.scoring import ScoreMonth, ScoreVersion  # noqa: E402

__all__ = ["DownloadMonth", "CleanMonth", "BuildFeatures", "TuneHyperparams", "TrainModel", "RegisterModel",
           "SourceFile", "RegisterMonth", "RangeMonthly", "load_features", "ScoreVersion", "ScoreMonth",
           "ScoreMonthly"]
