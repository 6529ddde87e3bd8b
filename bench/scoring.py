"""Benchmark: scoring a month with the pipeline's code (CleanMonth's and ScoreVersion's functions, the registered
pyfunc) against the course's batch scoring (score.py, in bench/course.py), on the same month and the same model.

    scripts/bench-score --rows 3000000 --repeat 3

The month is synthetic (real green 2021-01 and 2021-02 trips resampled into 2021-03, as scripts/make_synthetic_month
makes it); the model is the course's parameters trained on the real green 2021-01 and registered in a local MLflow
registry in the work folder. Each side runs from the raw month to a predictions file in a fresh process of its own
(its own peak RSS), the sides alternate, and the figures are medians. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from bench import synthetic
from bench.course import (COURSE_PARAMS, COURSE_SEED, course_apply_model, course_prepare_dictionaries, course_read,
                          course_save_results, course_score_filter)
from bench.speed import DEFAULT_SOURCE_DIR, Stopwatch, machine, print_verdict, warm_page_cache
from taxi.data import tlc_filename

log = logging.getLogger(__name__)

COLOR, YEAR, MONTH = "green", 2021, 3
MODEL_VERSION = 1
STAGES = ("read", "clean", "load model", "predict", "write")
PREDICTIONS = "predictions.parquet"
GOALS = {"speedup": 10.0, "peak_rss_mb": 1536.0, "peak_rss_rows": 3_000_000}  # memory goal: at 3 M rows


@dataclass(frozen=True)
class Job:
    """What one side scores, with which model, and where it leaves its predictions."""

    month_path: str
    tracking_uri: str
    out_dir: str


# ---------------------------------------------------------------------------------------------------------------
# BASELINE: the course's score.py (bench/course.py), with the registered model's DictVectorizer and booster.
# ---------------------------------------------------------------------------------------------------------------

def run_course(job: Job) -> dict:
    import mlflow

    watch = Stopwatch()
    df = course_read(job.month_path)
    watch.lap("read")
    df = course_score_filter(df)  # with the read: score.py's read_dataframe
    watch.lap("clean")
    mlflow.set_tracking_uri(job.tracking_uri)
    artifacts = mlflow.artifacts.download_artifacts(f"models:/{registered_name()}/{MODEL_VERSION}")
    with open(os.path.join(artifacts, "artifacts", "vectorizer.pkl"), "rb") as f:
        dv = pickle.load(f)
    booster = xgb.Booster(model_file=os.path.join(artifacts, "artifacts", "booster.ubj"))
    watch.lap("load model")
    y_pred = course_apply_model(dv, booster, course_prepare_dictionaries(df))
    watch.lap("predict")
    course_save_results(df, y_pred, "bench", os.path.join(job.out_dir, PREDICTIONS))
    watch.lap("write")
    return side_result(watch, rows=len(df))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline: CleanMonth's functions, then ScoreVersion's, on targets in a store folder.
# ---------------------------------------------------------------------------------------------------------------

def run_pipeline(job: Job) -> dict:
    import mlflow

    from taxi import data, scoring, storage

    store = os.path.join(job.out_dir, "store")
    cleaned_target = storage.target(store, "cleaned.parquet")
    watch = Stopwatch()
    raw = data.read_trips(job.month_path, COLOR)
    watch.lap("read")
    cleaned, _ = data.clean_trips(raw, COLOR)
    del raw
    storage.write_parquet(cleaned, cleaned_target)  # CleanMonth's target, which ScoreVersion reads
    del cleaned
    watch.lap("clean")
    mlflow.set_tracking_uri(job.tracking_uri)
    model = scoring.model_version(COLOR, MODEL_VERSION)
    pyfunc = scoring.load(model)
    watch.lap("load model")
    trips = storage.read_parquet(cleaned_target, list(scoring.TRIP_COLUMNS))
    scored = scoring.predictions(trips, scoring.predict_trips(pyfunc, trips), model, COLOR, data.ym(YEAR, MONTH))
    live = scoring.live_error(scored)
    watch.lap("predict")
    distinct = len(scoring.distinct_rows(trips, scoring.ZONE_INPUTS)[0])
    del trips
    watch.restart()  # counting the distinct inputs is the benchmark's, not the task's
    storage.write_table(scored, storage.target(job.out_dir, PREDICTIONS))
    watch.lap("write")
    return side_result(watch, rows=live["rows"], live_rmse=live["rmse"], distinct_rows=distinct)


def side_result(watch: Stopwatch, **extra) -> dict:
    """The side's stage times, its CPU time (every thread's: less sensitive to a busy machine) and peak RSS."""
    return {"seconds": watch.seconds, "cpu_seconds": time.process_time(), "peak_rss_mb": own_peak_rss_mb(), **extra}


def own_peak_rss_mb() -> float:
    """This process's peak RSS since it started its program (VmHWM; getrusage's maximum also counts what the process
    it was forked from held)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def in_fresh_process(function: Callable, *args):
    """`function(*args)` in a new interpreter (its own imports and peak RSS)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------------------------
# The month, the model, the comparison
# ---------------------------------------------------------------------------------------------------------------

def registered_name() -> str:
    from taxi.registry import model_name

    return model_name(COLOR)


def prepare(args: argparse.Namespace, month: Path, tracking_uri: str) -> None:
    """The month and the registered model (in a process of its own, which leaves the sides' peak RSS alone)."""
    make_month(Path(args.source_dir), args.rows, args.seed, args.distinct, month)
    register_model(Path(args.source_dir), args.rounds, tracking_uri)


def make_month(source_dir: Path, rows: int, seed: int, distinct: bool, path: Path) -> None:
    """The synthetic month: real green 2021-01 and 2021-02 trips resampled into 2021-03; with `distinct`, each
    distance moved by a different billionth of a mile (0.003 miles at most at 3 M rows), so that no two trips share a
    model input."""
    sources = [str(source_dir / f"{COLOR}_tripdata_2021-{m:02d}.parquet") for m in (1, 2)]
    table = synthetic.make_month(synthetic.read_sources(sources), rows, COLOR, YEAR, MONTH, seed)
    if distinct:
        offset = np.random.default_rng(seed).permutation(rows) * 1e-9
        column = table.schema.get_field_index("trip_distance")
        table = table.set_column(column, "trip_distance", pa.array(table["trip_distance"].to_numpy() + offset))
    synthetic.write_month(table, str(path))


def register_model(source_dir: Path, rounds: int, tracking_uri: str) -> None:
    """The course's parameters trained on the real green 2021-01, logged as the pipeline logs a model and registered
    as version 1 (the same pyfunc users load)."""
    import mlflow

    from taxi import data, features, training

    train, _ = data.clean_trips(data.read_trips(source_dir / f"{COLOR}_tripdata_2021-01.parquet", COLOR), COLOR)
    vectorizer = features.fit_vectorizer(train)
    booster = training.train_booster(features.transform(vectorizer, train), features.target(train), COURSE_PARAMS,
                                     rounds, COURSE_SEED, os.cpu_count() or 1)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_name="bench-score model"):
        uri = training.log_model(booster, vectorizer)
    mlflow.register_model(uri, registered_name())


def compare(course_dir: str, pipeline_dir: str) -> dict[str, bool]:
    """Whether both sides scored the same trips (pickup time, zones, actual duration, in order) with the same
    predictions."""
    course = pd.read_parquet(os.path.join(course_dir, PREDICTIONS))
    pipeline = pd.read_parquet(os.path.join(pipeline_dir, PREDICTIONS))
    columns = {"lpep_pickup_datetime": "pickup_datetime", "PULocationID": "PULocationID",
               "DOLocationID": "DOLocationID", "actual_duration": "actual_duration"}
    same_trips = len(course) == len(pipeline) and all(
        np.array_equal(course[c].to_numpy(), pipeline[p].to_numpy()) for c, p in columns.items())
    same_predictions = len(course) == len(pipeline) and np.array_equal(
        course["predicted_duration"].to_numpy(dtype=np.float64), pipeline["predicted_duration"].to_numpy())
    return {"trips": bool(same_trips), "predictions": bool(same_predictions)}


def median_run(runs: list[dict]) -> dict:
    """Median seconds per stage over repeated runs, the highest peak RSS."""
    return {**runs[0], "seconds": {stage: statistics.median(run["seconds"][stage] for run in runs)
                                   for stage in STAGES},
            "cpu_seconds": statistics.median(run["cpu_seconds"] for run in runs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs)}


def summarize(rows: int, results: dict[str, dict], checks: dict[str, bool], args: argparse.Namespace,
              load_before: tuple[float, ...]) -> dict:
    seconds = {side: {stage: round(result["seconds"][stage], 3) for stage in STAGES}
               for side, result in results.items()}
    totals = {side: round(sum(stages.values()), 3) for side, stages in seconds.items()}
    per_second = {side: round(rows / total) for side, total in totals.items()}
    speedup = round(per_second["pipeline"] / per_second["course"], 2)
    cpu = {side: round(result["cpu_seconds"], 3) for side, result in results.items()}
    peak = {side: round(result["peak_rss_mb"]) for side, result in results.items()}
    goals = {f"rows/s >= {GOALS['speedup']:g}x the course's": speedup >= GOALS["speedup"]}
    if rows <= GOALS["peak_rss_rows"]:
        goals["pipeline peak RSS <= 1.5 GB"] = peak["pipeline"] <= GOALS["peak_rss_mb"]
    pipeline = results["pipeline"]
    return {"rows": rows, "scored_rows": pipeline["rows"], "distinct_model_inputs": pipeline["distinct_rows"],
            "distinct_distances": args.distinct, "repeat": args.repeat, "rounds": args.rounds,
            "identical": all(checks.values()), "checks": checks, "seconds": seconds, "total_seconds": totals,
            "rows_per_second": per_second, "speedup": speedup, "cpu_seconds": cpu,
            "cpu_speedup": round(cpu["course"] / cpu["pipeline"], 2), "peak_rss_mb": peak,
            "live_rmse": pipeline["live_rmse"], "goals": goals, "machine": machine(load_before)}


def table(summary: dict) -> str:
    """The markdown table docs/performance.md shows."""
    seconds, runs = summary["seconds"], f", median of {summary['repeat']} runs" if summary["repeat"] > 1 else ""
    lines = [f"| stage ({summary['rows']:,} rows{runs}) | course s | pipeline s |", "|---|---:|---:|"]
    lines += [f"| {stage} | {seconds['course'][stage]:.2f} | {seconds['pipeline'][stage]:.2f} |" for stage in STAGES]
    total, per_second, peak = summary["total_seconds"], summary["rows_per_second"], summary["peak_rss_mb"]
    lines += [f"| **whole month** | {total['course']:.2f} | {total['pipeline']:.2f} |",
              f"| rows/s | {per_second['course']:,} | {per_second['pipeline']:,} ({summary['speedup']}x) |",
              f"| CPU s, all threads | {summary['cpu_seconds']['course']:.2f} | "
              f"{summary['cpu_seconds']['pipeline']:.2f} ({summary['cpu_speedup']}x less) |",
              f"| peak RSS, MB | {peak['course']:,} | {peak['pipeline']:,} |"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The pipeline's scoring vs the course's score.py, on one month.")
    parser.add_argument("--rows", type=int, default=synthetic.DEFAULT_ROWS, help="rows of the month (%(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="resampling seed")
    parser.add_argument("--distinct", action="store_true",
                        help="move each trip's distance a little, so that no two trips share a model input")
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds of the model (%(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times; report medians")
    parser.add_argument("--source-dir", default=str(DEFAULT_SOURCE_DIR),
                        help="folder with the real green 2021-01 and 2021-02 TLC files (default %(default)s)")
    parser.add_argument("--workdir", help="keep the month, the registry and both sides' predictions here (an empty "
                                          "or new folder; default: a temporary folder)")
    args = parser.parse_args(argv)
    if min(args.rows, args.rounds, args.repeat) < 1:
        parser.error("--rows, --rounds and --repeat must be at least 1")
    if args.workdir and os.path.isdir(args.workdir) and os.listdir(args.workdir):
        parser.error(f"--workdir {args.workdir} is not empty")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="taxi-bench-score-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        month = workdir / tlc_filename(COLOR, YEAR, MONTH)
        log.info("writing %s (%d rows) and registering the model (%d rounds)", month, args.rows, args.rounds)
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        in_fresh_process(prepare, args, month, tracking_uri)
        warm_page_cache(month)
        jobs = {side: Job(str(month), tracking_uri, str(workdir / side)) for side in ("pipeline", "course")}
        for job in jobs.values():
            os.makedirs(job.out_dir)
        sides = {"pipeline": run_pipeline, "course": run_course}
        runs: dict[str, list[dict]] = {side: [] for side in jobs}
        for repeat in range(1, args.repeat + 1):  # the sides alternate, so a busy spell on a shared box hits both
            for side, job in jobs.items():
                log.info("run %d of %d: the %s side", repeat, args.repeat, side)
                runs[side].append(in_fresh_process(sides[side], job))
        results = {side: median_run(side_runs) for side, side_runs in runs.items()}
        summary = summarize(args.rows, results, compare(jobs["course"].out_dir, jobs["pipeline"].out_dir), args,
                            load_before)
    print(table(summary))
    print(f"\nidentical: {summary['identical']} ({', '.join(f'{k}={v}' for k, v in summary['checks'].items())})")
    print_verdict(summary)


if __name__ == "__main__":
    main()
