"""The champion decision's evidence and its record: the gate rows and the model's predictions on them, the drift of
the training month from its validation month, and the registration the decision ends in (pure: no luigi)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from taxi import data, drift, metrics, promotion, registry, scoring
from taxi.drift import DriftSettings, Measure


@dataclass(frozen=True)
class Evidence:
    """What a champion decision and its report rest on: the gate rows and the model's predictions on them, the
    training month and its validation month (the reference it must agree with), and the drift between them."""

    gate: pd.DataFrame
    predicted: np.ndarray
    month: pd.DataFrame
    reference: pd.DataFrame
    reference_month: str
    drift: list[Measure]

    @property
    def gate_rmse(self) -> float:
        return metrics.rmse(self.gate["duration"], self.predicted)

    def drifted(self) -> list[str]:
        """The drifted features, as the decision's reason names them."""
        return [measure.text() for measure in self.drift if measure.over]


def gather(model_uri: str, train: pd.DataFrame, valid: pd.DataFrame, valid_month: str, gate_share: float,
           settings: DriftSettings) -> Evidence:
    """The evidence for the model at `model_uri` from its cleaned training and validation months: its predictions
    on the validation month's gate rows, and the training month's drift from the validation month. Nothing of it is
    read from the registry: a champion that went stale cannot hold a good month back."""
    gate = valid[data.gate_rows(valid, gate_share)]
    return Evidence(gate, scoring.predict(model_uri, gate), train, valid, valid_month,
                    drift.compare(train, valid, settings))


def register(color: str, month: str, trained: dict, evidence: Evidence, policy: promotion.Policy, task_id: str,
             feature_set: str) -> dict:
    """Register the trained model, carry out the decision (promotion.decide, under the registry's decision lock),
    and return registration.json's record."""
    name = registry.model_name(color)
    inputs = registry.input_contract(trained["model_uri"])
    version, decision = registry.register(
        name, trained["run_id"], trained["model_uri"], evidence.gate_rmse,
        lambda uri: scoring.version_rmse(uri, evidence.gate),
        lambda champion: promotion.decide(month, evidence.gate_rmse, champion, evidence.drifted(), policy,
                                          inputs),
        policy.accepted())
    return {"name": name, "version": version, "run_id": trained["run_id"], "model_uri": trained["model_uri"],
            "tracking_uri": trained["tracking_uri"], "task_id": task_id, "month": month,
            "feature_set": feature_set, "inputs": list(inputs), "val_rmse": trained["val_rmse"],
            "gate_rmse": evidence.gate_rmse, "gate_rows": len(evidence.gate), **asdict(decision),
            **policy.accepted(), "reference_month": evidence.reference_month,
            "drift": [{**asdict(measure), "over": measure.over} for measure in evidence.drift]}
