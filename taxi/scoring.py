"""Registered models applied to cleaned trips, through MLflow's pyfunc, the way users load them: a month's
predictions, each with a deterministic ride id, and their live error (pure: no luigi)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from taxi import metrics, registry, tracking
from taxi.columns import DURATION, PICKUP
from taxi.serving import ZONE_INPUTS, model_input
from taxi.urls import redact

TRIP_COLUMNS = (PICKUP, *ZONE_INPUTS, DURATION)  # what scoring reads of a cleaned month
ID_FIELDS = (PICKUP, "PULocationID", "DOLocationID", "trip_distance")  # a trip's own fields in its ride id
MONTH_TAGS = (registry.MONTH_TAG, "valid.month")  # on a training run (tracking.lineage_tags)
# on a scoring run: the registered version it scored with, and the run that trained that version
MODEL_NAME_TAG, MODEL_VERSION_TAG, MODEL_RUN_TAG = "taxi.model_name", "taxi.model_version", "taxi.model_run_id"


class NoChampion(LookupError):
    """The color's model has no champion to score with; the message says to train one first."""


class UnknownVersion(LookupError):
    """The registry has no such version of the color's model."""


@dataclass(frozen=True)
class ModelVersion:
    """A registered version to score with, the run that trained it, and the RMSE it was registered with."""

    name: str
    version: int
    run_id: str
    model_id: str | None  # MLflow's logged model: the live error is logged against it too
    train_month: str | None
    valid_month: str | None
    registered_rmse: float | None  # None: registered without one (registry.registered_rmse)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def champion(color: str) -> int:
    """The version the champion alias of the color's model points at now."""
    name = registry.model_name(color)
    version = registry.champion_version(name, outcome="nothing was scored")
    if version is None:
        raise NoChampion(f"{name} has no champion in the registry at {redact(mlflow.get_tracking_uri())}: train "
                         f"and register a {color} month first (luigi --module taxi.tasks RegisterModel --color "
                         f"{color} --year YYYY --month M, or scripts/backfill)")
    return version


def model_version(color: str, version: int) -> ModelVersion:
    """Version `version` of the color's model, checked to be a model of that color's trips."""
    name, client = registry.model_name(color), MlflowClient()
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownVersion(f"{name} has no version {version} in the registry at "
                                 f"{redact(mlflow.get_tracking_uri())}: score with the champion (ScoreMonth) or a "
                                 f"version the registry lists") from None
        raise
    tags = client.get_run(found.run_id).data.tags
    if tags.get("color", color) != color:
        raise ValueError(f"{name} v{version} was trained on {tags['color']} trips, not {color} ones: it cannot "
                         f"score {color} months")
    months = [tags.get(tag) for tag in MONTH_TAGS]
    return ModelVersion(name, version, found.run_id, found.model_id or registry.logged_model_id(found.source),
                        *months, registry.registered_rmse(name, version))


def load(model: ModelVersion) -> mlflow.pyfunc.PyFuncModel:
    """The version's pyfunc, from the registry, as users load it."""
    return mlflow.pyfunc.load_model(model.uri)


def distinct_rows(frame: pd.DataFrame, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(the position of the first row of each distinct combination of `columns`, in order of appearance; each row's
    index into those), so that frame.iloc[first].iloc[inverse] has the values of `columns` of frame. Exact: no
    hash of values that could collide, and floats compared by their bits (-0.0 and 0.0 stay apart, as NaNs do)."""
    inverse = np.zeros(len(frame), dtype=np.int64)
    for column in columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values):
            values = values.to_numpy(dtype=np.float64).view(np.int64)
        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        inverse = pd.factorize(inverse * len(uniques) + codes)[0]  # stays below rows * len(uniques): no overflow
    return np.flatnonzero(~pd.Series(inverse).duplicated().to_numpy()), inverse


def inputs_of(model: mlflow.pyfunc.PyFuncModel) -> list[str]:
    """The raw trip fields a loaded model reads: the columns of its signature."""
    return model.metadata.get_input_schema().input_names()


def predict_trips(model: mlflow.pyfunc.PyFuncModel, trips: pd.DataFrame) -> np.ndarray:
    """The pyfunc's prediction for every cleaned trip, given as the model's raw input (the pickup time under the
    TLC's own name), asking it once per distinct input row: a prediction depends on nothing else, months repeat
    such rows, and MLflow checks the input's types value by value."""
    frame = model_input(trips, inputs_of(model))
    first, inverse = distinct_rows(frame, tuple(frame.columns))
    return np.asarray(model.predict(frame.iloc[first].reset_index(drop=True)))[inverse]


def ride_ids(trips: pd.DataFrame, color: str, month: str) -> pa.Array:
    """A deterministic id for each trip: 128 bits, as 32 hex digits, of pandas' hash (SipHash with a fixed key, no
    per-process seed) of the trip's position in the cleaned file and its own fields, keyed by color and month: the
    same on every rerun and host, another for any other trip."""
    fields = pd.DataFrame({"position": np.arange(len(trips), dtype=np.int64), **{c: trips[c] for c in ID_FIELDS}})
    halves = np.empty((len(trips), 2), dtype=">u8")  # big-endian: the hex digits read as the number
    for half in range(2):
        key = f"{color}:{month}:{half}".ljust(16, ".")  # SipHash's key: 16 bytes
        halves[:, half] = pd.util.hash_pandas_object(fields, index=False, hash_key=key).to_numpy()
    digits = pa.py_buffer(halves.tobytes().hex().encode("ascii"))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(trips), [None, digits]).cast(pa.string())


def predictions(trips: pd.DataFrame, predicted: np.ndarray, model: ModelVersion, color: str, month: str) -> pa.Table:
    """The scored month, one row per cleaned trip in its order: ride id, pickup time, zones, distance, actual and
    predicted duration (minutes), their difference, and the model that predicted."""
    actual = trips["duration"].to_numpy(dtype=np.float64)
    predicted = predicted.astype(np.float64)
    return pa.table({
        "ride_id": ride_ids(trips, color, month), PICKUP: pa.array(trips[PICKUP]),
        **{column: pa.array(trips[column]) for column in ZONE_INPUTS},
        "actual_duration": actual, "predicted_duration": predicted, "diff": actual - predicted,
        "model_name": pa.repeat(model.name, len(trips)), "model_version": pa.repeat(model.version, len(trips)),
        "model_run_id": pa.repeat(model.run_id, len(trips))})


def score(model: ModelVersion, trips: pd.DataFrame, color: str, month: str, alert_share: float) -> tuple[pa.Table,
                                                                                                        dict]:
    """A cleaned month scored with a registered version, loaded as users load it, inside the active MLflow run (its
    live error logged there, linked to the version's logged model): (the predictions, live.json's record so far)."""
    scored = predictions(trips, predict_trips(load(model), trips), model, color, month)
    live = live_error(scored)
    log_live_error(live, model)
    return scored, live_record(color, month, model, live, alert_share)


def live_error(scored: pa.Table) -> dict[str, float | int]:
    """RMSE and MAE (minutes) of a scored month's predictions against the actual durations, and its row count."""
    actual, predicted = (scored[column].to_numpy() for column in ("actual_duration", "predicted_duration"))
    return {"rmse": metrics.rmse(actual, predicted), "mae": metrics.mae(actual, predicted), "rows": len(actual)}


def is_alert(live_rmse: float, registered_rmse: float | None, share: float) -> bool:
    """Whether a month's live RMSE is worse than the RMSE the model was registered with by more than `share`."""
    return registered_rmse is not None and live_rmse > registered_rmse * (1 + share)


def live_record(color: str, month: str, model: ModelVersion, live: dict, alert_share: float) -> dict:
    """What live.json records of a scored month: the month, the version, its live error and whether it alerts."""
    return {"color": color, "month": month, "model_name": model.name, "model_version": model.version,
            "model_run_id": model.run_id, "model_train_month": model.train_month,
            "model_valid_month": model.valid_month, **live, "registered_rmse": model.registered_rmse,
            "alert_share": alert_share, "alert": is_alert(live["rmse"], model.registered_rmse, alert_share)}


def replacing_text(path: str, earlier: dict) -> str:
    """Why the files about to be replaced at `path` were another model: scored with another registry's version of
    this number."""
    return (f"replacing {path}: it was scored with {earlier['model_name']} v{earlier['model_version']} of the "
            f"registry at {earlier['tracking_uri']}, another model")


def summary(record: dict) -> str:
    """One line about a scored month, for the log."""
    registered = record["registered_rmse"]
    compared = ("the version has no registered RMSE to compare with" if registered is None else
                f"registered RMSE {registered:.4f}, alert above {registered * (1 + record['alert_share']):.4f}")
    return (f"{record['color']} {record['month']} scored with {record['model_name']} v{record['model_version']}: "
            f"live RMSE {record['rmse']:.4f} min, MAE {record['mae']:.4f} min, {record['rows']:,} trips "
            f"({compared}); {record['predictions']}")


def run_tags(color: str, model: ModelVersion, stats: dict) -> dict[str, str]:
    """A scoring run's tags: the version it scored with and where the month's data came from."""
    return {"color": color, MODEL_NAME_TAG: model.name, MODEL_VERSION_TAG: str(model.version),
            MODEL_RUN_TAG: model.run_id, **tracking.lineage_tags({"score": stats})}


def log_live_error(live: dict, model: ModelVersion) -> None:
    """The live error as metrics of the active run, linked to the version's logged model (MLflow lists them on the
    model's page, month by month)."""
    values = {"live_rmse": live["rmse"], "live_mae": live["mae"], "rows": live["rows"]}
    if model.registered_rmse is not None:
        values["registered_rmse"] = model.registered_rmse
    mlflow.log_metrics(values, model_id=model.model_id)


def predict(model_uri: str, trips: pd.DataFrame) -> np.ndarray:
    """The predictions of the model at `model_uri` (e.g. models:/name/3) for cleaned trips."""
    model = mlflow.pyfunc.load_model(model_uri)
    return np.asarray(model.predict(model_input(trips, inputs_of(model))))


def version_rmse(model_uri: str, trips: pd.DataFrame) -> float:
    """The RMSE of the model at `model_uri` on cleaned trips."""
    return metrics.rmse(trips["duration"], predict(model_uri, trips))
