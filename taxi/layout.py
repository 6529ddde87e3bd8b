"""The store's layout, declared once: every target's path relative to `[taxi] store` (pure: no luigi).

Tasks' outputs, `scripts/status`, the benchmarks, the tests and docs/pipeline.md's table read these templates.
`{ym}` is a month as YYYY-MM; `{key}` names the code version and settings a target was made with.
"""

from __future__ import annotations

from taxi.data import TLC_FILENAME, ym

FEATURES_VERSION = "v2"  # bump when the features or the cleaning rules change
MODEL_VERSION = "v1"  # bump when training or the logged model changes

RAW = "raw/{color}/" + TLC_FILENAME
RAW_META = RAW + ".json"
CLEAN = "clean/{key}/{color}/{ym}.parquet"
CLEAN_STATS = "clean/{key}/{color}/{ym}.json"
FEATURES = "features/{key}/{color}/{ym}/{name}"
FEATURE_FILES = ("vectorizer.pkl", "train.npz", "valid.npz")
TUNING = "tuning/{color}/{ym}/{key}/best_params.json"
REPORT_PLOTS = ("predicted_vs_actual.png", "residuals.png", "feature_importance.png")
TUNING_PLOT = "tuning.png"
DRIFT_PLOT = "drift.png"
REPORT = "report.md"
REPORT_FILES = (REPORT, *REPORT_PLOTS, TUNING_PLOT, DRIFT_PLOT)  # taxi.report makes them
RUNS = "runs/{color}"
RUN = RUNS + "/{ym}/{key}/{name}"
RUN_FILES = ("booster.ubj", "train.json", "registration.json", *REPORT_FILES)
REGISTRATION = "registration.json"
TASK_LOGS = "logs/{family}/{task_id}"  # every attempt of one Luigi task (taxi.pipeline.tasklog writes them)
TASK_LOG = TASK_LOGS + "/{attempt}.log"  # one attempt's log lines
TASK_LOG_RECORD = TASK_LOGS + "/{attempt}.json"  # one attempt's host, times, outcome and MLflow pages
SCORES = "scores/{color}"
SCORE = SCORES + "/{ym}/v{version}/{name}"  # a month scored with one registered version of the color's model
PREDICTIONS, LIVE = "predictions.parquet", "live.json"
SCORE_FILES = (PREDICTIONS, LIVE)
REGISTRY_RECORD = "registry.json"  # the registry the store serves (taxi.store_registry)


def raw(color: str, year: int, month: int) -> dict[str, str]:
    """The downloaded file ("data") and its provenance record ("meta")."""
    fields = {"color": color, "ym": ym(year, month)}
    return {"data": RAW.format(**fields), "meta": RAW_META.format(**fields)}


def clean(color: str, year: int, month: int, key: str) -> dict[str, str]:
    """The cleaned trips ("data") and the cleaning stats ("stats")."""
    fields = {"color": color, "ym": ym(year, month), "key": key}
    return {"data": CLEAN.format(**fields), "stats": CLEAN_STATS.format(**fields)}


def features(color: str, year: int, month: int, key: str) -> dict[str, str]:
    """The fitted vectorizer and the train/validation matrices, by name without extension."""
    return {name.split(".")[0]: FEATURES.format(color=color, ym=ym(year, month), key=key, name=name)
            for name in FEATURE_FILES}


def tuning(color: str, year: int, month: int, key: str) -> str:
    return TUNING.format(color=color, ym=ym(year, month), key=key)


def run(color: str, year: int, month: int, key: str) -> dict[str, str]:
    """Every file of a trained model's run folder, by file name."""
    return {name: RUN.format(color=color, ym=ym(year, month), key=key, name=name) for name in RUN_FILES}


def scores(color: str, year: int, month: int, version: int) -> dict[str, str]:
    """A month's predictions by one model version, and their live error, by file name."""
    return {name: SCORE.format(color=color, ym=ym(year, month), version=version, name=name) for name in SCORE_FILES}


def run_month(relpath: str) -> str:
    """The training month (YYYY-MM) of a path inside a run folder."""
    return relpath.split("/")[2]


def task_log(family: str, task_id: str, attempt: str) -> dict[str, str]:
    """One attempt of a task: its log lines ("log") and its record ("record")."""
    fields = {"family": family, "task_id": task_id, "attempt": attempt}
    return {"log": TASK_LOG.format(**fields), "record": TASK_LOG_RECORD.format(**fields)}


def templates() -> list[str]:
    """Every path the pipeline writes, as a template: the table of docs/pipeline.md lists exactly these."""
    return [RAW, RAW_META, CLEAN, CLEAN_STATS, *(FEATURES.replace("{name}", n) for n in FEATURE_FILES), TUNING,
            *(RUN.replace("{name}", n) for n in RUN_FILES), *(SCORE.replace("{name}", n) for n in SCORE_FILES),
            TASK_LOG, TASK_LOG_RECORD, REGISTRY_RECORD]
