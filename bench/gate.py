"""The optimism of the figure tuning chooses by: selection RMSE against gate RMSE, on real months.

    scripts/bench-gate [--source-dir ../shared/data/tlc]

For green 2021-01 (validated on 2021-02) and 2023-01 (on 2023-02), one whole `luigi ... RegisterModel` run with the
default settings on a fresh store; then the course's fixed parameters trained on the same training matrix and scored
on the same selection and gate rows. Prints a markdown table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from bench import register
from bench.course import COURSE_PARAMS, COURSE_ROUNDS, COURSE_SEED
from taxi import data, features, metrics, serving, storage, tasks, training
from tests.support.paths import TLC_DIR

log = logging.getLogger(__name__)

MONTHS = ((2021, 1), (2023, 1))


def course_rmses(run: tasks.RegisterModel) -> dict[str, float]:
    """The course's model (its features, fixed parameters and rounds), trained on the run's cleaned training month:
    RMSE on the run's selection and gate rows."""
    inputs = run.input()
    train, valid = (storage.read_parquet(inputs["clean"][key]["data"]) for key in ("train", "valid"))
    vectorizer = features.fit_vectorizer(train)
    booster = training.train_booster(features.transform(vectorizer, train), features.target(train), COURSE_PARAMS,
                                     COURSE_ROUNDS, COURSE_SEED, os.cpu_count() or 1)
    is_gate = data.gate_rows(valid, run.requires()["features"].gate_share)
    return {name: metrics.rmse(rows["duration"].to_numpy(), serving.predict(booster, features.transform(vectorizer,
                                                                                                       rows)))
            for name, rows in (("selection", valid[~is_gate]), ("gate", valid[is_gate]))}


def measure(source_dir: Path, workdir: Path) -> list[dict]:
    rows = []
    for month in MONTHS:
        folder = workdir / f"{month[0]}-{month[1]:02d}"
        folder.mkdir(parents=True)
        config = register.write_config(folder, source_dir, {})
        seconds, _ = register.run_luigi(folder, config, "run.log", month)
        run = register.finished_run(folder, config, month)
        registration = storage.read_json(run.output()["registration.json"])
        course = course_rmses(run)
        rows.append({"month": registration["month"], "seconds": round(seconds, 1),
                     "selection_rmse": registration["val_rmse"], "gate_rmse": registration["gate_rmse"],
                     "gate_rows": registration["gate_rows"], "course_selection_rmse": course["selection"],
                     "course_gate_rmse": course["gate"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| training month | tuned: selection RMSE | tuned: gate RMSE | optimism | course params: selection | "
             "course params: gate | gate rows |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['month']} | {r['selection_rmse']:.4f} | {r['gate_rmse']:.4f} | "
              f"{r['gate_rmse'] - r['selection_rmse']:+.4f} | {r['course_selection_rmse']:.4f} | "
              f"{r['course_gate_rmse']:.4f} | {r['gate_rows']:,} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-dir", type=Path, default=TLC_DIR, help="folder of the real TLC files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="taxi-bench-gate-") as tmp:
        rows = measure(args.source_dir, Path(tmp))
    print(table(rows))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
