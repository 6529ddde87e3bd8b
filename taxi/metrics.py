"""How far predictions are from actual trip durations (pure: no luigi)."""

from __future__ import annotations

import numpy as np


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error, in the targets' unit (minutes)."""
    return float(np.sqrt(np.mean((np.asarray(y_true, dtype=np.float64) - y_pred) ** 2)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error, in the targets' unit (minutes)."""
    return float(np.mean(np.abs(np.asarray(y_true, dtype=np.float64) - y_pred)))
