"""Whether a registered model becomes champion, and why (pure: no luigi, no MLflow).

Like TFX's Evaluator (and MLflow's MetricThreshold): a value threshold (an RMSE cap no champion may exceed) and a
change threshold (a relative improvement over the champion, both scored on the same gate rows), plus three rules of
this pipeline: the champion is the model of the newest month, a model whose input contract differs from the
champion's is held (clients pinned to the alias must not receive a model that rejects their rows), and so is a model
whose training month drifted from its validation month (broken data).
"""

from __future__ import annotations

from dataclasses import dataclass

CHAMPION, CHALLENGER = "champion", "challenger"  # the decisions that set the alias of that name
REJECTED, HELD, OLDER = "rejected", "held", "older"  # registered, no alias


@dataclass(frozen=True)
class Policy:
    """The thresholds; these defaults are the pipeline's (RegisterModel's parameters take them)."""

    min_improvement: float = 0.005  # relative: 0.005 = the gate RMSE must be 0.5 % below the champion's
    max_rmse: float = 10.0  # minutes, on the gate rows: above it a model never becomes champion
    accept_drift: bool = False  # promote a month whose data drifted, on purpose
    accept_contract_change: bool = False  # promote a model whose input contract differs from the champion's

    def accepted(self) -> dict[str, bool]:
        """The flags an operator sets on purpose, as a decision records them."""
        return {"accept_drift": self.accept_drift, "accept_contract_change": self.accept_contract_change}

    def validate(self) -> None:
        if not 0 <= self.min_improvement < 1:
            raise ValueError(f"[RegisterModel] min_improvement must be at least 0 and below 1, got "
                             f"{self.min_improvement}")
        if self.max_rmse <= 0:
            raise ValueError(f"[RegisterModel] max_rmse must be above 0 minutes, got {self.max_rmse}")


@dataclass(frozen=True)
class Champion:
    """The champion when the decision is made: its version, training month, RMSE on this model's gate rows and input
    contract (one "name (type)" per column)."""

    version: int
    month: str
    gate_rmse: float
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What became of a registered version, why, and the champion it was compared with (None: there was none)."""

    decision: str
    reason: str
    previous_champion_version: int | None = None
    previous_champion_month: str | None = None
    previous_champion_gate_rmse: float | None = None

    @property
    def alias(self) -> str | None:
        return self.decision if self.decision in (CHAMPION, CHALLENGER) else None


def contract_change(inputs: tuple[str, ...], champion_inputs: tuple[str, ...]) -> str | None:
    """What a model's input contract changes from the champion's ("adds X (any); removes Y (double)"), None if
    nothing."""
    added = [column for column in inputs if column not in champion_inputs]
    removed = [column for column in champion_inputs if column not in inputs]
    parts = ([f"adds {', '.join(added)}"] if added else []) + ([f"removes {', '.join(removed)}"] if removed else [])
    return "; ".join(parts) or None


def decide(month: str, gate_rmse: float, champion: Champion | None, drifted: list[str], policy: Policy,
           inputs: tuple[str, ...] = ()) -> Decision:
    """The decision for a model of training month `month` (YYYY-MM) with `gate_rmse` and input contract `inputs`;
    `drifted` names the features of its month that drifted from its validation month. The rules in order: the cap,
    the months' order, the input contract, drift, then the margin over the champion (docs/pipeline.md)."""
    before = {} if champion is None else {"previous_champion_version": champion.version,
                                          "previous_champion_month": champion.month,
                                          "previous_champion_gate_rmse": champion.gate_rmse}
    if gate_rmse > policy.max_rmse:
        return Decision(REJECTED, f"rejected: RMSE {gate_rmse:.2f} above the cap {policy.max_rmse:g}", **before)
    if champion is not None and month < champion.month:
        return Decision(OLDER, f"older than the champion: trained on {month}, champion v{champion.version} on "
                               f"{champion.month}", **before)
    accepted = ""
    change = None if champion is None else contract_change(inputs, champion.inputs)
    if change:
        if not policy.accept_contract_change:
            return Decision(HELD, f"held: input contract differs from champion v{champion.version}'s ({change})",
                            **before)
        accepted += f"; input contract change accepted ({change})"
    if drifted:
        if not policy.accept_drift:
            return Decision(HELD, f"held: data drift ({', '.join(drifted)})", **before)
        accepted += f"; data drift accepted ({', '.join(drifted)})"
    if champion is None:
        return Decision(CHAMPION, f"champion: the first model, RMSE {gate_rmse:.2f} within the cap {policy.max_rmse:g}"
                                  f"{accepted}", **before)
    relative = 100 * (gate_rmse / champion.gate_rmse - 1)
    scores = f"{gate_rmse:.2f} vs {champion.gate_rmse:.2f}, {relative:+.1f} %"
    margin = f"the {100 * policy.min_improvement:g} % margin"
    if gate_rmse < champion.gate_rmse * (1 - policy.min_improvement):
        return Decision(CHAMPION, f"champion: {scores} beats {margin}{accepted}", **before)
    return Decision(CHALLENGER, f"challenger: {scores} does not beat {margin}{accepted}", **before)
