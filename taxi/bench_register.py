"""Benchmark of one whole `luigi --module taxi.tasks RegisterModel` run on synthetic months, default tuning budget.

    scripts/bench-register --rows 3000000

Runs the real command line in a scratch folder (its own store and MLflow database), runs it again to time a complete
rerun, then trains the course's fixed parameters on the same features to compare validation RMSE. The last line
printed is one JSON object for machines.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi
import pyarrow.parquet as pq

from taxi import bench, storage, synthetic, tasks

log = logging.getLogger(__name__)

GOALS = {"wall_seconds": 15 * 60, "rerun_seconds": 3.0}
LUIGI = Path(sys.executable).with_name("luigi")
TRAIN_MONTH = bench.TRAIN_MONTH  # the synthetic months are named for it and the month after


def run_luigi(workdir: Path, config: Path, log_name: str) -> tuple[float, float]:
    """`luigi --module taxi.tasks RegisterModel` for the training month as an operator runs it;
    (wall seconds, peak RSS MB)."""
    command = [str(LUIGI), "--module", "taxi.tasks", "RegisterModel", "--year", str(TRAIN_MONTH[0]),
               "--month", str(TRAIN_MONTH[1])]
    with open(workdir / log_name, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        tail = (workdir / log_name).read_text().splitlines()[-30:]
        raise SystemExit(f"RegisterModel exited {returncode}; the end of {workdir / log_name}:\n" + "\n".join(tail))
    return seconds, usage.ru_maxrss / 1024


def write_config(workdir: Path, source_dir: Path, max_evals: int | None) -> Path:
    """The shipped luigi.cfg in the scratch folder, plus an override that points it at the months and scratch stores."""
    shutil.copyfile(bench.ROOT / "luigi.cfg", workdir / "luigi.cfg")
    lines = ["[taxi]", f"source = {source_dir}", f"store = {workdir / 'store'}",
             "[mlflow]", f"tracking_uri = sqlite:///{workdir / 'mlflow.db'}",
             f"artifact_location = {workdir / 'mlartifacts'}"]
    if max_evals is not None:
        lines += ["[TuneHyperparams]", f"max_evals = {max_evals}"]
    config = workdir / "bench.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def finished_run(workdir: Path, config: Path) -> tasks.RegisterModel:
    """The RegisterModel the command line ran, configured as it was, so its targets name the files it wrote."""
    for path in (workdir / "luigi.cfg", config):
        luigi.configuration.add_config_path(str(path))
    return tasks.RegisterModel(year=TRAIN_MONTH[0], month=TRAIN_MONTH[1])


def course_params_rmse(run: tasks.RegisterModel, rounds: int) -> tuple[float, float]:
    """Validation RMSE of the course's fixed parameters on the run's own feature matrices; (RMSE, seconds)."""
    from taxi import training

    _, X_train, y_train, X_valid, y_valid = tasks.load_features(run.input()["features"])
    started = time.perf_counter()
    booster = training.train_booster(X_train, y_train, bench.COURSE_SEARCH_PARAMS, rounds, bench.COURSE_PARAMS["seed"],
                                     os.cpu_count() or 1)
    return training.rmse(y_valid, training.predict(booster, X_valid)), time.perf_counter() - started


def summarize(args: argparse.Namespace, rows: int, first: tuple[float, float], rerun: tuple[float, float],
              run: tasks.RegisterModel, course: tuple[float, float], load_before: tuple[float, ...]) -> dict:
    registration = storage.read_json(run.output()["registration.json"])
    trained = storage.read_json(run.input()["model"]["run"])
    tuned = storage.read_json(run.input()["params"])
    val_rmse, course_rmse = registration["val_rmse"], course[0]
    return {
        "rows": rows, "real_months": args.real, "max_evals": args.max_evals,
        "wall_seconds": round(first[0], 1), "peak_rss_mb": round(first[1]), "rerun_seconds": round(rerun[0], 2),
        "stage_seconds": {"tune": tuned["seconds"], "train + log": trained["seconds"],
                          "download, clean, features, register": round(first[0] - tuned["seconds"]
                                                                       - trained["seconds"], 1)},
        "tuning": {"trials": tuned["trials"], "train_rows_used": tuned["train_rows_used"],
                   "valid_rows_used": tuned["valid_rows_used"],
                   "num_boost_round": tuned["num_boost_round"], "params": tuned["params"]},
        "val_rmse": val_rmse, "course_params_val_rmse": course_rmse,
        "course_params_train_seconds": round(course[1], 1), "course_params_rounds": args.course_rounds,
        "goals": {"RegisterModel under 15 min": first[0] < GOALS["wall_seconds"],
                  "complete rerun under 3 s": rerun[0] < GOALS["rerun_seconds"],
                  "validation RMSE no worse than the course params": val_rmse <= course_rmse},
        "machine": bench.machine(load_before),
    }


def table(summary: dict) -> str:
    tuning = summary["tuning"]
    lines = [f"| RegisterModel, {summary['rows']:,} rows/month | |", "|---|---:|",
             f"| whole run, wall | {summary['wall_seconds'] / 60:.1f} min |"]
    lines += [f"| &nbsp;&nbsp;{stage} | {seconds:.0f} s |" for stage, seconds in summary["stage_seconds"].items()]
    lines += [f"| tuning | {tuning['trials']} trials on {tuning['train_rows_used']:,} training rows, scored on "
              f"{tuning['valid_rows_used']:,} validation rows; final {tuning['num_boost_round']} rounds on all rows |",
              f"| peak RSS | {summary['peak_rss_mb']:,} MB |",
              f"| complete rerun, wall | {summary['rerun_seconds']:.2f} s |",
              f"| validation RMSE, registered model | {summary['val_rmse']:.4f} |",
              f"| validation RMSE, course params ({summary['course_params_rounds']} rounds, all rows) | "
              f"{summary['course_params_val_rmse']:.4f} |"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time one whole RegisterModel run and a complete rerun.")
    parser.add_argument("--rows", type=int, default=synthetic.DEFAULT_ROWS,
                        help="rows per synthetic month (default %(default)s)")
    parser.add_argument("--real", action="store_true", help="use the real source months as they are (ignores --rows)")
    parser.add_argument("--seed", type=int, default=42, help="resampling seed")
    parser.add_argument("--source-dir", default=str(bench.DEFAULT_SOURCE_DIR),
                        help="folder with the real green 2021-01 and 2021-02 TLC files (default %(default)s)")
    parser.add_argument("--data-dir", help="keep synthetic months here and reuse them (default: a temporary folder)")
    parser.add_argument("--workdir", help="run here and keep the store, MLflow database and logs (must be empty)")
    parser.add_argument("--max-evals", type=int, help="tuning trials (default: luigi.cfg's)")
    parser.add_argument("--course-rounds", type=int, default=100, help="rounds for the course params' comparison")
    args = parser.parse_args(argv)
    if min(args.rows, args.course_rounds, args.max_evals or 1) < 1:
        parser.error("--rows, --max-evals and --course-rounds must be at least 1")
    if args.workdir and os.path.exists(args.workdir) and os.listdir(args.workdir):
        parser.error(f"--workdir {args.workdir} is not empty: a finished run there would be reused, not timed")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="taxi-bench-register-") as tmp:
        train_path, _ = bench.months(args, Path(args.data_dir or tmp))
        rows = pq.ParquetFile(train_path).metadata.num_rows
        workdir = Path(args.workdir or os.path.join(tmp, "run"))
        workdir.mkdir(parents=True, exist_ok=True)
        config = write_config(workdir, train_path.parent, args.max_evals)
        log.info("RegisterModel on %d rows per month in %s", rows, workdir)
        first = run_luigi(workdir, config, "run.log")
        log.info("the same command again, everything complete")
        rerun = run_luigi(workdir, config, "rerun.log")
        if "ran successfully" in (workdir / "rerun.log").read_text():
            raise SystemExit(f"the rerun ran tasks again; see {workdir / 'rerun.log'}")
        log.info("the course's fixed parameters on the same features")
        run = finished_run(workdir, config)
        course = course_params_rmse(run, args.course_rounds)
        summary = summarize(args, rows, first, rerun, run, course, load_before)
    print(table(summary))
    bench.print_verdict(summary)


if __name__ == "__main__":
    main()
