"""The pipeline as an operator runs it, and what such a run needs: config files, a small tuning, sampled months."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.support.paths import BIN, ROOT

SAMPLE_ROWS = 8000  # trips of each month sampled for the tests that tune and train several times
SMALL_TUNING = {"max_evals": "2", "num_boost_round": "20", "early_stopping_rounds": "5", "startup_evals": "2"}


def write_config(path: Path, sections: dict[str, dict[str, str]]) -> Path:
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                            for name, values in sections.items()))
    return path


def run_luigi(workdir: Path, config: Path, *args: str, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    """`luigi --module taxi.tasks ARGS` as an operator runs it: in `workdir` with the shipped luigi.cfg there,
    overrides via LUIGI_CONFIG_PATH."""
    if not (workdir / "luigi.cfg").exists():
        shutil.copyfile(ROOT / "luigi.cfg", workdir / "luigi.cfg")
    return subprocess.run([str(BIN / "luigi"), "--module", "taxi.tasks", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "LUIGI_CONFIG_PATH": str(config), **(env or {})})


def sample_month(source: Path, dest: Path, rows: int, seed: int = 42, shuffle_distance: bool = False) -> None:
    """A fixed random sample of `rows` trips of a TLC file, in the TLC's schema; `shuffle_distance` deals the trip
    distances out to the wrong trips, so nothing the model learns from them holds for another month."""
    rng = np.random.default_rng(seed)
    table = pq.read_table(source)
    table = table.take(np.sort(rng.choice(table.num_rows, rows, replace=False)))
    if shuffle_distance:
        column = table.schema.get_field_index("trip_distance")
        table = table.set_column(column, "trip_distance", table["trip_distance"].take(rng.permutation(rows)))
    pq.write_table(table, dest)
