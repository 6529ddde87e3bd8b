"""Two small tasks for runs through the proxy (tests/integration/test_proxy.py): each writes its name to a file."""

from __future__ import annotations

from pathlib import Path

import luigi


class Touch(luigi.Task):
    folder = luigi.Parameter()
    name = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(Path(self.folder) / self.name))

    def run(self) -> None:
        with self.output().open("w") as f:
            f.write(self.name)


class Pair(luigi.WrapperTask):
    folder = luigi.Parameter()

    def requires(self) -> list[Touch]:
        return [Touch(folder=self.folder, name=name) for name in ("first", "second")]
