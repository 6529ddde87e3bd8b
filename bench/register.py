"""Benchmark of whole `luigi --module taxi.tasks RegisterModel` runs: the defaults and the pipeline before (the
course's features and space) side by side, or, with --versus-course, the defaults against the course's script.

    scripts/bench-register --real --repeat 3        # green 2021-01 -> 2021-02
    scripts/bench-register --rows 3000000            # synthetic months

Runs the real command line in scratch folders (each run its own store and MLflow database), the first run of each
tuning twice to time a complete rerun, then trains the course's fixed parameters on the same features to compare
validation RMSE. The last line printed is one JSON object for machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import luigi
import pyarrow.parquet as pq

from bench import speed, synthetic
from bench.course import COURSE_PARAMS, COURSE_ROUNDS, COURSE_SEED
from taxi import layout, tasks
from taxi.tuning import pruned_count

log = logging.getLogger(__name__)

GOALS = {"rerun_seconds": 3.0}
LUIGI = Path(sys.executable).with_name("luigi")
TRAIN_MONTH = speed.TRAIN_MONTH  # the synthetic months are named for it and the month after


def run_luigi(workdir: Path, config: Path, log_name: str,
              month: tuple[int, int] = TRAIN_MONTH) -> tuple[float, float]:
    """`luigi --module taxi.tasks RegisterModel` for the training month as an operator runs it;
    (wall seconds, peak RSS MB)."""
    # --no-lock: each run has a scratch store of its own, and the same command may run elsewhere on this machine
    command = [str(LUIGI), "--module", "taxi.tasks", "RegisterModel", "--year", str(month[0]),
               "--month", str(month[1]), "--no-lock"]
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


# The tuning before issue 11: the course's space, 10 trials on 500,000-row samples, no pruning, no warm start.
OLD_TUNING = {"search_space": "course", "max_evals": "10", "no_progress_evals": "5", "startup_evals": "5",
              "sample_rows": "500000", "prune_tolerance": "0", "warm_start": "false"}
# The sides compared, as luigi.cfg sections: the defaults, and the pipeline before issue 11 (and issue 24's
# features): the course's feature set and its space.
SIDES = {"new": {}, "old": {"BuildFeatures": {"feature_set": "course"}, "TuneHyperparams": OLD_TUNING}}


def write_config(workdir: Path, source_dir: Path, sections: dict[str, dict[str, str]]) -> Path:
    """The shipped luigi.cfg in the scratch folder, plus an override that points it at the months and scratch stores
    and sets the side's sections."""
    shutil.copyfile(speed.ROOT / "luigi.cfg", workdir / "luigi.cfg")
    lines = ["[taxi]", f"source = {source_dir}", f"store = {workdir / 'store'}",
             "[mlflow]", f"tracking_uri = sqlite:///{workdir / 'mlflow.db'}",
             f"artifact_location = {workdir / 'mlartifacts'}"]
    for section, values in sections.items():
        lines += [f"[{section}]", *(f"{key} = {value}" for key, value in values.items())]
    config = workdir / "bench.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def finished_run(workdir: Path, config: Path, month: tuple[int, int] = TRAIN_MONTH) -> tasks.RegisterModel:
    """The RegisterModel the command line ran, configured as it was, so its targets name the files it wrote."""
    for path in (workdir / "luigi.cfg", config):
        luigi.configuration.add_config_path(str(path))
    return tasks.RegisterModel(year=month[0], month=month[1])


def course_params_rmse(run: tasks.RegisterModel, rounds: int) -> tuple[float, float]:
    """Validation RMSE of the course's model (its features and fixed parameters) trained on the run's cleaned training
    month, on the run's selection rows; (RMSE, seconds)."""
    from taxi import data, features, metrics, serving, storage, training

    clean = run.input()["clean"]
    train, valid = (storage.read_parquet(clean[key]["data"]) for key in ("train", "valid"))
    selection = valid[~data.gate_rows(valid, run.requires()["features"].gate_share)]
    vectorizer = features.fit_vectorizer(train)
    started = time.perf_counter()
    booster = training.train_booster(features.transform(vectorizer, train), features.target(train), COURSE_PARAMS,
                                     rounds, COURSE_SEED, os.cpu_count() or 1)
    seconds = time.perf_counter() - started
    return metrics.rmse(features.target(selection), serving.predict(booster, features.transform(vectorizer,
                                                                                                selection))), seconds


def timed_run(workdir: Path, source_dir: Path, sections: dict[str, dict[str, str]], rerun: bool) -> dict:
    """One whole RegisterModel run on a fresh store and MLflow database (and, with `rerun`, the same command again,
    which must run nothing); its figures."""
    workdir.mkdir(parents=True)
    config = write_config(workdir, source_dir, sections)
    total, rss = run_luigi(workdir, config, "run.log")
    figures = {"total_seconds": round(total, 1), "peak_rss_mb": round(rss)}
    if rerun:
        figures["rerun_seconds"] = round(run_luigi(workdir, config, "rerun.log")[0], 2)
        if "ran successfully" in (workdir / "rerun.log").read_text():
            raise SystemExit(f"the rerun ran tasks again; see {workdir / 'rerun.log'}")
    return {**figures, **records(workdir / "store")}


def records(store: Path) -> dict:
    """What the targets of the one run in a fresh store say about its tuning, training and registration."""
    def only(template: str, name: str = "") -> dict:
        pattern = template.format(color="*", ym="*", key="*", name=name)
        found = list(store.glob(pattern))
        if len(found) != 1:
            raise SystemExit(f"expected one {pattern} in {store}, found {len(found)}")
        return json.loads(found[0].read_text())

    tuned, trained = only(layout.TUNING), only(layout.RUN, "train.json")
    registration = only(layout.RUN, layout.REGISTRATION)
    return {"tune_seconds": tuned["seconds"], "train_seconds": trained["seconds"], "val_rmse": registration["val_rmse"],
            "trials": tuned["trials"], "pruned_trials": pruned_count(tuned["history"]),
            "train_rows_used": tuned["train_rows_used"], "valid_rows_used": tuned["valid_rows_used"],
            "num_boost_round": tuned["num_boost_round"], "params": tuned["params"]}


def median_of(runs: list[dict]) -> dict:
    """Medians of the timed figures over repeated runs; the rest from the first (the search is deterministic)."""
    timed = ("total_seconds", "tune_seconds", "train_seconds", "peak_rss_mb", "val_rmse")
    return {**runs[0], **{key: statistics.median(run[key] for run in runs) for key in timed},
            "repeats": len(runs), "total_seconds_each": [run["total_seconds"] for run in runs]}


def goals(args: argparse.Namespace, sides: dict[str, dict], course_rmse: float) -> dict[str, bool]:
    new = sides["new"]
    found = {"complete rerun under 3 s": new["rerun_seconds"] < GOALS["rerun_seconds"],
             "validation RMSE better than the course params": new["val_rmse"] < course_rmse}
    if args.real:
        found.update({"whole run at most 120 s": new["total_seconds"] <= 120,
                      "validation RMSE at most 6.40": new["val_rmse"] <= 6.40,
                      "peak RSS at most 1.5 GB": new["peak_rss_mb"] <= 1536})
    else:
        found["whole run at most 5 min"] = new["total_seconds"] <= 300
    if "old" in sides:
        found["validation RMSE no worse than the old tuning's"] = new["val_rmse"] <= sides["old"]["val_rmse"]
    return found


def table(rows: int, sides: dict[str, dict], course: tuple[float, float], course_rounds: int) -> str:
    names = list(sides)
    lines = [f"| RegisterModel, {rows:,} rows/month | " + " | ".join(f"{n} tuning" for n in names) + " |",
             "|---|" + "---:|" * len(names)]

    def row(label: str, render) -> None:
        lines.append(f"| {label} | " + " | ".join(render(sides[n]) for n in names) + " |")

    row("whole run, wall (median)", lambda s: f"{s['total_seconds']:.0f} s")
    row("&nbsp;&nbsp;tune", lambda s: f"{s['tune_seconds']:.0f} s")
    row("&nbsp;&nbsp;train + log", lambda s: f"{s['train_seconds']:.0f} s")
    row("trials (pruned)", lambda s: f"{s['trials']} ({s['pruned_trials']})")
    row("peak RSS", lambda s: f"{s['peak_rss_mb']:,.0f} MB")
    row("validation RMSE", lambda s: f"{s['val_rmse']:.4f}")
    row("runs", lambda s: ", ".join(f"{t:.0f}" for t in s["total_seconds_each"]) + " s")
    lines.append(f"| the course's model ({course_rounds} rounds, its features): validation RMSE | {course[0]:.4f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# --versus-course: the course's notebook as a script (bench/course_script.py, the baseline) and the pipeline's
# whole default run, on the same real months, alternating, in one call.

def time_command(command: list[str], log_path: Path, env: dict | None = None) -> tuple[float, float]:
    """A command's (wall seconds, peak RSS MB), its output in `log_path`; a failure stops the benchmark."""
    with open(log_path, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} exited {os.waitstatus_to_exitcode(status)}; see {log_path}")
    return seconds, usage.ru_maxrss / 1024


def course_script(source_dir: Path, month: tuple[int, int], out: Path) -> dict:
    """The course's script on the real month and the next: its wall time and peak RSS in a fresh process."""
    from taxi import data

    out.mkdir(parents=True)
    paths = [source_dir / data.tlc_filename("green", *m) for m in (month, data.next_month(*month))]
    seconds, rss = time_command([sys.executable, "-P", "-m", "bench.course_script", *map(str, paths), str(out)],
                                out / "course.log", {"PYTHONPATH": str(speed.ROOT)})
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(rss)}


def gate_rmses(workdir: Path, course_dir: Path, month: tuple[int, int]) -> dict[str, float]:
    """The RMSE of the pipeline's registered model and of the course's model on the run's gate rows (picked here from
    the stored validation month), both re-scored by this benchmark."""
    import pickle

    import mlflow
    import pandas as pd
    import xgboost as xgb

    from taxi import data, metrics, registry

    [path] = (workdir / "store").glob(f"clean/*/green/{data.ym(*data.next_month(*month))}.parquet")
    valid = pd.read_parquet(path)
    gate = valid[data.gate_rows(valid, 0.5)]
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{registry.model_name('green')}/1")
    raw = gate.rename(columns={"pickup_datetime": "lpep_pickup_datetime"})  # as a raw month's rows name it
    pipeline = metrics.rmse(gate["duration"], model.predict(raw[model.metadata.get_input_schema().input_names()]))
    with open(course_dir / "dv.pkl", "rb") as f:
        dv = pickle.load(f)
    booster = xgb.Booster(model_file=str(course_dir / "booster.ubj"))
    X_gate = dv.transform(gate[["PU_DO", "trip_distance"]].to_dict(orient="records"))
    course = metrics.rmse(gate["duration"], booster.predict(xgb.DMatrix(X_gate)))
    return {"pipeline_gate_rmse": pipeline, "course_gate_rmse": course, "gate_rows": len(gate)}


def versus_course(args: argparse.Namespace, workdir: Path) -> dict:
    """For each month: the course script and the pipeline's default whole run, alternating, `--repeat` times each;
    medians, both models' gate RMSEs and the goals."""
    source_dir = Path(args.source_dir)
    months = {}
    for text in args.months.split(","):
        month = tuple(map(int, text.split("-")))
        course_runs, pipeline_runs = [], []
        for i in range(args.repeat):
            log.info("green %s: the course script, run %d of %d", text, i + 1, args.repeat)
            course_runs.append(course_script(source_dir, month, workdir / f"{text}-course-{i}"))
            log.info("green %s: the pipeline's default whole run, run %d of %d", text, i + 1, args.repeat)
            run_dir = workdir / f"{text}-pipeline-{i}"
            run_dir.mkdir(parents=True)
            seconds, rss = run_luigi(run_dir, write_config(run_dir, source_dir, {}), "run.log", month)
            pipeline_runs.append({"seconds": round(seconds, 1), "peak_rss_mb": round(rss)})
        course_s = statistics.median(r["seconds"] for r in course_runs)
        pipeline_s = statistics.median(r["seconds"] for r in pipeline_runs)
        rmses = gate_rmses(workdir / f"{text}-pipeline-0", workdir / f"{text}-course-0", month)
        months[text] = {
            "course_seconds": course_s, "pipeline_seconds": pipeline_s, "ratio": round(pipeline_s / course_s, 2),
            "course_seconds_each": [r["seconds"] for r in course_runs],
            "pipeline_seconds_each": [r["seconds"] for r in pipeline_runs],
            "course_peak_rss_mb": max(r["peak_rss_mb"] for r in course_runs),
            "pipeline_peak_rss_mb": max(r["peak_rss_mb"] for r in pipeline_runs), **rmses,
            "gate_rmse_change": round(rmses["pipeline_gate_rmse"] / rmses["course_gate_rmse"] - 1, 4)}
    goals = {}
    for text, m in months.items():
        goals[f"{text}: whole run at most 2.0x the course script"] = m["ratio"] <= 2.0
        goals[f"{text}: peak RSS at most 1.5 GB"] = m["pipeline_peak_rss_mb"] <= 1536
        goals[f"{text}: gate RMSE at least 10 % below the course's model"] = m["gate_rmse_change"] <= -0.10
    return {"months": months, "goals": goals, "repeats": args.repeat}


def versus_table(months: dict[str, dict]) -> str:
    lines = ["| green, train -> next month | course script | pipeline, whole default run | ratio | peak RSS, course "
             "/ pipeline | gate RMSE, course's model | gate RMSE, pipeline's | change |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for text, m in months.items():
        lines.append(
            f"| {text} ({m['gate_rows']:,} gate rows) | {m['course_seconds']:.1f} s "
            f"({', '.join(f'{s:.1f}' for s in m['course_seconds_each'])}) | {m['pipeline_seconds']:.1f} s "
            f"({', '.join(f'{s:.1f}' for s in m['pipeline_seconds_each'])}) | {m['ratio']:.2f}x | "
            f"{m['course_peak_rss_mb']:,} / {m['pipeline_peak_rss_mb']:,} MB | {m['course_gate_rmse']:.4f} | "
            f"{m['pipeline_gate_rmse']:.4f} | {100 * m['gate_rmse_change']:+.1f} % |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time whole RegisterModel runs, the new tuning and the old side by "
                                                 "side, each on a fresh store, and a complete rerun.")
    parser.add_argument("--rows", type=int, default=synthetic.DEFAULT_ROWS,
                        help="rows per synthetic month (default %(default)s)")
    parser.add_argument("--real", action="store_true", help="use the real source months as they are (ignores --rows)")
    parser.add_argument("--seed", type=int, default=42, help="resampling seed")
    parser.add_argument("--source-dir", default=str(speed.DEFAULT_SOURCE_DIR),
                        help="folder with the real green 2021-01 and 2021-02 TLC files (default %(default)s)")
    parser.add_argument("--data-dir", help="keep synthetic months here and reuse them (default: a temporary folder)")
    parser.add_argument("--workdir", help="run here and keep the stores, MLflow databases and logs (must be empty)")
    parser.add_argument("--tuning", choices=("both", "new", "old"), default="both", help="which tuning to time")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tuning; figures are medians")
    parser.add_argument("--max-evals", type=int, help="tuning trials of both tunings (default: each one's own)")
    parser.add_argument("--course-rounds", type=int, default=COURSE_ROUNDS,
                        help="rounds for the course params' comparison")
    parser.add_argument("--versus-course", action="store_true",
                        help="time the course's script and the pipeline's default whole run on the real --months, "
                             "alternating, and score both models on the same gate rows")
    parser.add_argument("--months", default="2021-01,2023-01",
                        help="training months for --versus-course, YYYY-MM,... (default %(default)s)")
    args = parser.parse_args(argv)
    if min(args.rows, args.course_rounds, args.repeat, args.max_evals or 1) < 1:
        parser.error("--rows, --repeat, --max-evals and --course-rounds must be at least 1")
    if args.workdir and os.path.exists(args.workdir) and os.listdir(args.workdir):
        parser.error(f"--workdir {args.workdir} is not empty: a finished run there would be reused, not timed")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    args = parse_args(argv)
    load_before = os.getloadavg()
    if args.versus_course:
        with tempfile.TemporaryDirectory(prefix="taxi-bench-versus-") as tmp:
            summary = versus_course(args, Path(args.workdir or tmp))
        print(versus_table(summary["months"]))
        speed.print_verdict({**summary, "machine": speed.machine(load_before)})
        return
    names = ["new", "old"] if args.tuning == "both" else [args.tuning]
    with tempfile.TemporaryDirectory(prefix="taxi-bench-register-") as tmp:
        train_path, _ = speed.months(args, Path(args.data_dir or tmp))
        rows = pq.ParquetFile(train_path).metadata.num_rows
        workdir = Path(args.workdir or os.path.join(tmp, "run"))
        sides = {}
        for name in names:
            runs = []
            for i in range(args.repeat):
                log.info("RegisterModel on %d rows per month, %s tuning, run %d of %d", rows, name, i + 1, args.repeat)
                side = SIDES[name]
                tuning = {**side.get("TuneHyperparams", {}), **({"max_evals": str(args.max_evals)}
                                                                 if args.max_evals else {})}
                sections = {**side, "TuneHyperparams": tuning}
                runs.append(timed_run(workdir / f"{name}-{i}", train_path.parent, sections, rerun=i == 0))
            sides[name] = median_of(runs)
        log.info("the course's fixed parameters on the same features")
        first = workdir / f"{names[0]}-0"
        course = course_params_rmse(finished_run(first, first / "bench.cfg"), args.course_rounds)
    lead = sides[names[0]]
    summary = {"rows": rows, "real_months": args.real, "tune_seconds": lead["tune_seconds"],
               "total_seconds": lead["total_seconds"], "val_rmse": lead["val_rmse"],
               "peak_rss_mb": lead["peak_rss_mb"], "sides": sides, "course_params_val_rmse": course[0],
               "course_params_train_seconds": round(course[1], 1), "course_params_rounds": args.course_rounds,
               "goals": goals(args, sides, course[0]) if "new" in sides else {}, "machine": speed.machine(load_before)}
    print(table(rows, sides, course, args.course_rounds))
    speed.print_verdict(summary)


if __name__ == "__main__":
    main()
