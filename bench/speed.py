"""Benchmark: the course's code path (the baseline) against the pipeline's functions on the same months.

    scripts/bench --rows 3000000

Each side runs in its own fresh process, stage by stage, so each has its own peak RSS. The pipeline side runs
first and saves its booster: with --skip-course-training the course side predicts with that booster instead of
training its own. The last line printed is one JSON object for machines.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xgboost as xgb

from bench import synthetic
from bench.course import (COURSE_PARAMS, COURSE_ROUNDS, COURSE_SEED, course_dicts, course_duration, course_filter,
                          course_predict, course_read, course_rmse, course_train, course_vectorize)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE_DIR = ROOT.parent / "shared" / "data" / "tlc"
TRAIN_MONTH, VALID_MONTH = (2021, 1), (2021, 2)
COLOR = "green"  # the course's code reads lpep_* columns
COMPARED_COLUMNS = ["PULocationID", "DOLocationID", "PU_DO", "trip_distance", "duration"]
STAGES = ("read", "clean", "features", "train", "predict")
DATA_STAGES = ("read", "clean", "features")
GOALS = {"data_speedup": 10.0, "data_peak_rss_mb": 1536.0, "data_peak_rss_rows": 3_000_000,  # memory goal: 3 M rows
         "train_speedup": 1.0, "predict_speedup": 3.0}


@dataclass(frozen=True)
class Job:
    """What one side runs on, and where it leaves its outputs for the comparison."""

    train_path: str
    valid_path: str
    out_dir: str
    rounds: int
    predict: bool  # train and predict; else stop after the features
    nthread: int
    pretrained: str | None = None  # predict with this booster instead of training one (the course side at 10 M)


class Stopwatch:
    """Seconds and the process's peak RSS after each stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self.peak_rss_mb[stage] = peak_rss_mb()
        self._last = now

    def restart(self) -> None:
        """Do not count what happened since the last lap (saving outputs for the comparison)."""
        self._last = time.perf_counter()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------------------------
# BASELINE: the course's code (bench/course.py), as the notebook runs it, stage by stage.
# ---------------------------------------------------------------------------------------------------------------

def run_course(job: Job) -> dict:
    watch, detail = Stopwatch(), {}
    df_train, df_val = course_read(job.train_path), course_read(job.valid_path)
    watch.lap("read")

    started = time.perf_counter()
    df_train, df_val = course_duration(df_train), course_duration(df_val)
    detail["clean: duration via .apply"] = time.perf_counter() - started
    df_train, df_val = course_filter(df_train), course_filter(df_val)
    watch.lap("clean")
    detail["clean: filter, astype(str), PU_DO"] = watch.seconds["clean"] - detail["clean: duration via .apply"]

    started = time.perf_counter()
    train_dicts, val_dicts = course_dicts(df_train), course_dicts(df_val)
    detail["features: to_dict(orient='records')"] = time.perf_counter() - started
    dv, X_train, X_val = course_vectorize(train_dicts, val_dicts)
    y_train = df_train["duration"].values
    y_val = df_val["duration"].values
    watch.lap("features")
    detail["features: DictVectorizer"] = watch.seconds["features"] - detail["features: to_dict(orient='records')"]

    save_outputs(job.out_dir, df_train, df_val, dv.feature_names_, X_train, X_val)
    watch.restart()
    if not job.predict:
        return side_result(watch, detail)
    if job.pretrained:
        booster = xgb.Booster(model_file=job.pretrained)
        watch.restart()
    else:
        booster = course_train(X_train, y_train, job.rounds)
        watch.lap("train")
    y_pred = course_predict(booster, X_val)
    watch.lap("predict")
    np.save(os.path.join(job.out_dir, "predictions.npy"), y_pred)
    return side_result(watch, detail, rmse=course_rmse(y_val, y_pred))


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's own functions, as CleanMonth, BuildFeatures, TrainModel call them.
# ---------------------------------------------------------------------------------------------------------------

def run_pipeline(job: Job) -> dict:
    from taxi import data, features, metrics, serving, training

    watch = Stopwatch()
    train_raw, valid_raw = data.read_trips(job.train_path, COLOR), data.read_trips(job.valid_path, COLOR)
    watch.lap("read")
    train_df, _ = data.clean_trips(train_raw, COLOR)
    del train_raw  # CleanMonth keeps only what it writes
    valid_df, _ = data.clean_trips(valid_raw, COLOR)
    del valid_raw
    watch.lap("clean")
    vectorizer = features.fit_vectorizer(train_df)
    X_train, X_valid = features.transform(vectorizer, train_df), features.transform(vectorizer, valid_df)
    y_train, y_valid = features.target(train_df), features.target(valid_df)
    watch.lap("features")

    save_outputs(job.out_dir, train_df, valid_df, vectorizer.feature_names_, X_train, X_valid)
    del train_df, valid_df
    watch.restart()
    if not job.predict:
        return side_result(watch, {})
    booster = training.train_booster(X_train, y_train, COURSE_PARAMS, job.rounds, COURSE_SEED, job.nthread)
    watch.lap("train")
    booster.save_model(booster_path(job.out_dir))
    watch.restart()
    y_pred = serving.predict(booster, X_valid)
    watch.lap("predict")
    np.save(os.path.join(job.out_dir, "predictions.npy"), y_pred)
    distinct = len(serving.distinct_rows(X_valid)[0])
    return side_result(watch, {}, rmse=metrics.rmse(y_valid, y_pred), distinct_valid_rows=distinct)


def booster_path(out_dir: str) -> str:
    return os.path.join(out_dir, "booster.ubj")


def median_run(runs: list[dict]) -> dict:
    """Median seconds per stage and the highest peak RSS over repeated runs (whose outputs are identical)."""
    merged = dict(runs[0])
    for key in ("seconds", "detail_seconds"):
        merged[key] = {stage: statistics.median(run[key][stage] for run in runs) for stage in runs[0][key]}
    merged["peak_rss_mb"] = {stage: max(run["peak_rss_mb"][stage] for run in runs)
                             for stage in runs[0]["peak_rss_mb"]}
    merged["peak_rss_mb_overall"] = max(run["peak_rss_mb_overall"] for run in runs)
    return merged


def side_result(watch: Stopwatch, detail: dict, **extra) -> dict:
    return {"seconds": watch.seconds, "detail_seconds": detail, "peak_rss_mb": watch.peak_rss_mb,
            "peak_rss_mb_overall": peak_rss_mb(), **extra}


def save_outputs(out_dir: str, train_df: pd.DataFrame, valid_df: pd.DataFrame, feature_names: list[str],
                 X_train, X_valid) -> None:
    """What the comparison needs: cleaned rows, feature names and matrices."""
    from taxi import features

    for name, df in (("train", train_df), ("valid", valid_df)):
        df[COMPARED_COLUMNS].reset_index(drop=True).to_parquet(os.path.join(out_dir, f"clean_{name}.parquet"))
    with open(os.path.join(out_dir, "feature_names.json"), "w") as f:
        json.dump(feature_names, f)
    for name, X in (("train", X_train), ("valid", X_valid)):
        with open(os.path.join(out_dir, f"X_{name}.npz"), "wb") as f:
            features.save_matrix(X, np.empty(0), f)


def run_side(side: str, job: Job) -> dict:
    """Run one side in a fresh process (its own imports, its own peak RSS)."""
    os.makedirs(job.out_dir, exist_ok=True)
    target = run_course if side == "course" else run_pipeline
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(target, job).result()


# ---------------------------------------------------------------------------------------------------------------
# Comparison and report
# ---------------------------------------------------------------------------------------------------------------

def compare(course_dir: str, pipeline_dir: str, results: dict[str, dict]) -> dict[str, bool]:
    """Which outputs are identical: cleaned rows, feature matrices (entry for entry), predictions, RMSE."""
    from taxi import features

    def both(name: str) -> tuple[str, str]:
        return os.path.join(course_dir, name), os.path.join(pipeline_dir, name)

    def same_rows(a: str, b: str) -> bool:
        course, pipeline = pq.read_table(a), pq.read_table(b)
        return course.num_rows == pipeline.num_rows and all(
            course[c].cast(pipeline[c].type).equals(pipeline[c]) for c in COMPARED_COLUMNS)

    def same_matrix(a: str, b: str) -> bool:
        (course, _), (pipeline, _) = features.load_matrix(a), features.load_matrix(b)
        return (course.shape == pipeline.shape and np.array_equal(course.indptr, pipeline.indptr)
                and np.array_equal(course.indices, pipeline.indices) and np.array_equal(course.data, pipeline.data))

    def same_json(a: str, b: str) -> bool:
        with open(a) as fa, open(b) as fb:
            return json.load(fa) == json.load(fb)

    checks = {
        "clean_rows": all(same_rows(*both(f"clean_{n}.parquet")) for n in ("train", "valid")),
        "feature_names": same_json(*both("feature_names.json")),
        "feature_matrices": all(same_matrix(*both(f"X_{n}.npz")) for n in ("train", "valid")),
    }
    if "rmse" in results["pipeline"]:
        course, pipeline = both("predictions.npy")
        checks["predictions"] = np.array_equal(np.load(course), np.load(pipeline))
        checks["rmse"] = results["course"]["rmse"] == results["pipeline"]["rmse"]
    return checks


def ratio(course: float | None, pipeline: float | None) -> float | None:
    return round(course / pipeline, 2) if course and pipeline else None


def summarize(rows: int, course: dict, pipeline: dict, checks: dict[str, bool], args: argparse.Namespace,
              load_before: tuple[float, ...]) -> dict:
    seconds = {side: {stage: round(result["seconds"][stage], 3) for stage in STAGES if stage in result["seconds"]}
               for side, result in (("course", course), ("pipeline", pipeline))}
    for side in seconds.values():
        side["read+clean+features"] = round(sum(side[stage] for stage in DATA_STAGES), 3)
    speedup = {stage: ratio(seconds["course"].get(stage), seconds["pipeline"].get(stage))
               for stage in (*STAGES, "read+clean+features")}
    data_peak = {side: round(result["peak_rss_mb"]["features"]) for side, result in
                 (("course", course), ("pipeline", pipeline))}
    rmse = {"course": course.get("rmse"), "pipeline": pipeline.get("rmse")}
    goals = {"read+clean+features >= 10x faster": (speedup["read+clean+features"] or 0) >= GOALS["data_speedup"]}
    if rows <= GOALS["data_peak_rss_rows"]:
        goals["peak RSS at read+clean+features <= 1.5 GB"] = data_peak["pipeline"] <= GOALS["data_peak_rss_mb"]
    if speedup["train"] is not None:
        goals["train not slower"] = speedup["train"] >= GOALS["train_speedup"]
    if speedup["predict"] is not None:
        goals["predict >= 3x faster"] = speedup["predict"] >= GOALS["predict_speedup"]
    return {
        "rows": rows, "real_months": args.real, "repeat": args.repeat, "identical": all(checks.values()),
        "checks": checks,
        "seconds": seconds, "speedup": speedup, "course_detail_seconds": {
            k: round(v, 3) for k, v in course["detail_seconds"].items()},
        "peak_rss_mb": {"read+clean+features": data_peak,
                        "overall": {"course": round(course["peak_rss_mb_overall"]),
                                    "pipeline": round(pipeline["peak_rss_mb_overall"])}},
        "rmse": rmse, "rounds": args.rounds if not args.skip_training else None,
        "course_trained": not (args.skip_training or args.skip_course_training),
        "distinct_valid_rows": pipeline.get("distinct_valid_rows"),
        "goals": goals, "machine": machine(load_before),
    }


def machine(load_before: tuple[float, ...]) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                                    * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def table(summary: dict) -> str:
    """The markdown table the README shows."""
    course, pipeline, speedup = summary["seconds"]["course"], summary["seconds"]["pipeline"], summary["speedup"]
    labels = {"read": "read (train + valid month)", "clean": "clean", "features": "features (fit + 2 transforms)",
              "read+clean+features": "**read + clean + features**",
              "train": f"train, course params, {summary['rounds']} rounds", "predict": "predict (valid month)"}
    runs = f", median of {summary['repeat']} runs" if summary["repeat"] > 1 else ""
    lines = [f"| stage ({summary['rows']:,} rows/month{runs}) | course s | pipeline s | speed-up |",
             "|---|---:|---:|---:|"]
    details = summary["course_detail_seconds"]
    for stage, label in labels.items():
        if stage not in pipeline:
            continue
        lines.append(f"| {label} | {_cell(course.get(stage))} | {_cell(pipeline[stage])} | "
                     f"{_cell(speedup[stage], 'x')} |")
        for name, value in details.items():
            if name.startswith(f"{stage}:"):
                lines.append(f"| &nbsp;&nbsp;course {name.split(': ', 1)[1]} | {value:.2f} | | |")
    peaks = summary["peak_rss_mb"]
    for label, key in (("peak RSS after read + clean + features, MB", "read+clean+features"),
                       ("peak RSS of the whole run, MB", "overall")):
        lines.append(f"| {label} | {peaks[key]['course']:,} | {peaks[key]['pipeline']:,} | |")
    rmse = summary["rmse"]
    if rmse["pipeline"] is not None:
        lines.append(f"| validation RMSE, min | {_cell(rmse['course'], digits=6)} | "
                     f"{_cell(rmse['pipeline'], digits=6)} | |")
    return "\n".join(lines)


def _cell(value: float | None, suffix: str = "", digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def months(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path]:
    """The train and validation months: the real source months, or synthetic ones (made once per size/seed)."""
    sources = [Path(args.source_dir) / f"{COLOR}_tripdata_{y}-{m:02d}.parquet" for y, m in (TRAIN_MONTH, VALID_MONTH)]
    if args.real:
        return sources[0], sources[1]
    paths = []
    for source, (year, month) in zip(sources, (TRAIN_MONTH, VALID_MONTH)):
        path = data_dir / f"{args.rows}rows-seed{args.seed}" / f"{COLOR}_tripdata_{year}-{month:02d}.parquet"
        if not path.exists():
            log.info("writing synthetic %s (%d rows from %s)", path, args.rows, source.name)
            table_ = synthetic.make_month(synthetic.read_sources([str(source)]), args.rows, COLOR, year, month,
                                          args.seed)
            synthetic.write_month(table_, str(path))
        paths.append(path)
    return paths[0], paths[1]


def warm_page_cache(*paths: Path) -> None:
    """Read the files once, so that neither side's read stage pays for the first read from disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Course code path vs the pipeline's functions, stage by stage.")
    parser.add_argument("--rows", type=int, default=synthetic.DEFAULT_ROWS,
                        help="rows per synthetic month (default %(default)s)")
    parser.add_argument("--real", action="store_true", help="use the real source months as they are (ignores --rows)")
    parser.add_argument("--seed", type=int, default=42, help="resampling seed")
    parser.add_argument("--source-dir", default=str(DEFAULT_SOURCE_DIR),
                        help="folder with the real green 2021-01 and 2021-02 TLC files (default %(default)s)")
    parser.add_argument("--data-dir", help="keep synthetic months here and reuse them (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=COURSE_ROUNDS, help="boosting rounds with the course params")
    parser.add_argument("--threads", type=int, default=0, help="XGBoost threads for the pipeline; 0 = all cores")
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times; report medians")
    parser.add_argument("--skip-training", action="store_true", help="only read, clean and features")
    parser.add_argument("--skip-course-training", action="store_true",
                        help="the course side predicts with the pipeline's booster instead of training its own")
    args = parser.parse_args(argv)
    if min(args.rows, args.rounds, args.repeat) < 1:
        parser.error("--rows, --rounds and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="taxi-bench-") as tmp:
        train_path, valid_path = months(args, Path(args.data_dir or tmp))
        rows = pq.ParquetFile(train_path).metadata.num_rows
        warm_page_cache(train_path, valid_path)
        nthread = args.threads or os.cpu_count() or 1
        pipeline_dir, course_dir = os.path.join(tmp, "pipeline"), os.path.join(tmp, "course")
        jobs = {"pipeline": Job(str(train_path), str(valid_path), pipeline_dir, args.rounds,
                                not args.skip_training, nthread),
                "course": Job(str(train_path), str(valid_path), course_dir, args.rounds, not args.skip_training,
                              nthread, booster_path(pipeline_dir) if args.skip_course_training else None)}
        runs: dict[str, list[dict]] = {side: [] for side in jobs}
        for repeat in range(1, args.repeat + 1):  # sides alternate, so a busy spell on a shared box hits both
            for side, job in jobs.items():
                log.info("run %d of %d: the %s side on %d rows per month", repeat, args.repeat, side, rows)
                runs[side].append(run_side(side, job))
        results = {side: median_run(side_runs) for side, side_runs in runs.items()}
        checks = compare(course_dir, pipeline_dir, results)
    summary = summarize(rows, results["course"], results["pipeline"], checks, args, load_before)
    print(table(summary))
    print(f"\nidentical: {summary['identical']} ({', '.join(f'{k}={v}' for k, v in checks.items())})")
    print_verdict(summary)


def print_verdict(summary: dict) -> None:
    """Each goal met or missed, the machine, then the summary as one JSON line (the last line printed)."""
    for goal, met in summary["goals"].items():
        print(f"goal {'met    ' if met else 'MISSED '} {goal}")
    m = summary["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['mem_gb']} GiB; load average {m['loadavg_before'][0]} "
          f"before, {m['loadavg_after'][0]} after")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
