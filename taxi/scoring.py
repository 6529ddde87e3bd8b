"""Registered models applied to cleaned trips, through MLflow's pyfunc, the way users load them (pure: no luigi)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from taxi import metrics
from taxi.serving import INPUT_COLUMNS


def predict(model_uri: str, trips: pd.DataFrame) -> np.ndarray:
    """The predictions of the model at `model_uri` (e.g. models:/name/3) for cleaned trips."""
    return mlflow.pyfunc.load_model(model_uri).predict(trips[list(INPUT_COLUMNS)])


def version_rmse(model_uri: str, trips: pd.DataFrame) -> float:
    """The RMSE of the model at `model_uri` on cleaned trips."""
    return metrics.rmse(trips["duration"], predict(model_uri, trips))
