"""Registered models applied to cleaned trips, through MLflow's pyfunc, the way users load them (pure: no luigi)."""

from __future__ import annotations

import mlflow
import pandas as pd

from taxi import metrics
from taxi.serving import INPUT_COLUMNS


def version_rmse(model_uri: str, trips: pd.DataFrame) -> float:
    """The RMSE of the model at `model_uri` (e.g. models:/name/3) on cleaned trips."""
    predicted = mlflow.pyfunc.load_model(model_uri).predict(trips[list(INPUT_COLUMNS)])
    return metrics.rmse(trips["duration"], predicted)
