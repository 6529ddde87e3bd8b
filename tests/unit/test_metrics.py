"""taxi/metrics.py: RMSE and MAE in minutes."""

from __future__ import annotations

import numpy as np
import pytest

from taxi import metrics


def test_rmse_and_mae_of_known_errors():
    actual, predicted = np.array([10, 20, 30, 40]), np.array([12.0, 18.0, 30.0, 44.0], dtype=np.float32)
    assert metrics.rmse(actual, predicted) == pytest.approx(np.sqrt((4 + 4 + 0 + 16) / 4))
    assert metrics.mae(actual, predicted) == pytest.approx((2 + 2 + 0 + 4) / 4)
    assert isinstance(metrics.rmse(actual, predicted), float) and metrics.rmse(actual, actual) == 0.0
