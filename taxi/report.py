"""The per-run report: a markdown summary and PNG plots (pure: no luigi)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from taxi.data import dropped_share
from taxi.layout import DRIFT_PLOT, REPORT, REPORT_PLOTS, TUNING_PLOT
from taxi.tuning import pruned_count


def _pyplot():
    """matplotlib's pyplot, drawing off screen (matplotlib loads in seconds: imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def plots(y_true: np.ndarray, y_pred: np.ndarray, importances: dict[str, float], top: int = 20) -> dict[str, bytes]:
    """PNG bytes for predicted-vs-actual, the residual histogram and the top feature importances."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 6))
    cells = ax.hexbin(y_true, y_pred, gridsize=60, bins="log", cmap="viridis", extent=(0, 60, 0, 60), mincnt=1)
    fig.colorbar(cells, ax=ax, label="trips per cell (log scale)")
    ax.plot([0, 60], [0, 60], color="red", linewidth=1)
    ax.set(xlabel="actual duration (min)", ylabel="predicted duration (min)", title="Gate rows: predicted vs actual")
    predicted_vs_actual = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(y_pred - y_true, bins=120, range=(-40, 40), color="steelblue")
    ax.set(xlabel="predicted - actual (min)", ylabel="trips", title="Gate rows: residuals")
    residuals = _png(fig)

    # trip_distance's gain is orders of magnitude above any zone pair's: on a linear axis only its bar shows
    ranked = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)[:top]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(ranked), 1) + 1))
    ax.barh([name for name, _ in ranked][::-1], [value for _, value in ranked][::-1], color="darkorange")
    ax.set_xscale("log")
    ax.set(xlabel="total gain (log scale)", title=f"Top {len(ranked)} features")
    importance = _png(fig)
    return dict(zip(REPORT_PLOTS, (predicted_vs_actual, residuals, importance)))


def tuning_plot(history: list[dict], course_rmse: float | None) -> bytes:
    """PNG: each trial's validation RMSE against the search's elapsed time, pruned trials and the warm start marked,
    the course's fixed parameters as a reference line."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = {"finished": lambda t: t["pruned_at"] is None and not t["warm_start"],
             "pruned": lambda t: t["pruned_at"] is not None,
             "warm start (champion's parameters)": lambda t: t["warm_start"] and t["pruned_at"] is None}
    for (label, chosen), marker in zip(kinds.items(), ("o", "x", "*")):
        trials = [t for t in history if chosen(t)]
        if trials:
            ax.scatter([t["elapsed"] for t in trials], [t["val_rmse"] for t in trials], marker=marker, s=60,
                       label=label)
    if course_rmse is not None:
        ax.axhline(course_rmse, color="red", linestyle="--", linewidth=1,
                   label=f"course's fixed parameters ({course_rmse:.4f})")
    ax.set(xlabel="search time at the end of the trial (s)", ylabel="validation RMSE (trial sample)",
           title="Tuning: trials")
    ax.legend(fontsize="small")
    return _png(fig)


def drift_plot(month: pd.DataFrame, reference: pd.DataFrame, month_name: str, reference_name: str) -> bytes:
    """PNG: per drift feature, this training month's distribution beside the reference month's: the pickup and
    dropoff zones' frequencies (the reference's 20 busiest), distance, duration."""
    plt = _pyplot()

    frames = {month_name: month, reference_name: reference}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, column in zip(axes[0], ("PULocationID", "DOLocationID")):
        busiest = reference[column].value_counts().index[:20]
        for offset, (name, frame) in enumerate(frames.items()):
            shares = frame[column].value_counts(normalize=True).reindex(busiest, fill_value=0)
            ax.bar(np.arange(len(busiest)) + 0.4 * offset, shares, width=0.4, label=name)
        ax.set_xticks(np.arange(len(busiest)) + 0.2, busiest, rotation=90, fontsize="x-small")
        ax.set(title=f"{column}: share of trips", xlabel="zone")
    for ax, (column, upper, unit) in zip(axes[1], (("trip_distance", 20, "miles"), ("duration", 60, "minutes"))):
        for name, frame in frames.items():
            ax.hist(frame[column].clip(upper=upper), bins=60, range=(0, upper), density=True, histtype="step",
                    label=name)
        ax.set(title=f"{column} (clipped at {upper})", xlabel=unit)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return _png(fig)


def build(color: str, registration: dict, trained: dict, tuning: dict, stats: dict[str, dict], y_gate: np.ndarray,
          predicted: np.ndarray, importances: dict[str, float],
          drift_frames: tuple[pd.DataFrame, pd.DataFrame], register_seconds: float) -> dict[str, bytes]:
    """Every file of a run's report (layout.REPORT_FILES), as bytes by name, from the run's records (registration,
    training, tuning, the months' stats), the model's predictions on the gate rows, the feature importances and
    the training and reference months' cleaned trips."""
    summary = {
        "color": color, "registration": registration, "train_rmse": trained["train_rmse"], "tuning": tuning,
        "data": {"train_month": stats["train"]["month"], "valid_month": stats["valid"]["month"],
                 "train": stats["train"], "valid": stats["valid"]},
        "timings": {"download (train, valid)": stats["train"]["seconds"] + stats["valid"]["seconds"],
                    "clean (train, valid)": stats["train"]["clean_seconds"] + stats["valid"]["clean_seconds"],
                    "tune": tuning["seconds"], "train + log": trained["seconds"],
                    "register + report": register_seconds},
    }
    return {REPORT: markdown(summary).encode(), **plots(y_gate, predicted, importances),
            TUNING_PLOT: tuning_plot(tuning["history"], tuning.get("course_val_rmse")),
            DRIFT_PLOT: drift_plot(*drift_frames, registration["month"], registration["reference_month"])}


def _tuning_lines(tuning: dict) -> list[str]:
    """The search in a few lines: trials, pruned, warm start, and the course's parameters on the same sample where a
    tuning recorded them (taxi's tunings before the clock feature set did)."""
    pruned = pruned_count(tuning["history"])
    course = tuning.get("course_val_rmse")
    line = (f"{tuning['trials']} trials ({pruned} pruned) in {tuning['search_seconds']:.1f} s; "
            f"{tuning['warm_start']['note']}; best validation RMSE on the trial sample {tuning['val_rmse']:.4f}"
            + ("" if course is None else f", the course's fixed parameters {course:.4f}") + ".")
    return ["", line, "", f"![tuning]({TUNING_PLOT})"]


def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _evidence_lines(reg: dict, valid_month: str) -> list[str]:
    """The RMSEs the decision rests on, the optimism of the figure tuning chose by, and the decision's reason."""
    champion = ("none" if reg["previous_champion_version"] is None else
                f"{reg['previous_champion_gate_rmse']:.4f} (v{reg['previous_champion_version']}, trained on "
                f"{reg['previous_champion_month']})")
    return [
        f"The validation month {valid_month} is split by a hash of each trip: the selection rows chose the "
        f"trees' rounds and the best trial; the {reg['gate_rows']:,} gate rows were read by no step before the "
        f"decision.",
        "",
        "| RMSE (minutes) | value |",
        "|---|---:|",
        f"| selection rows (what tuning and training saw) | {reg['val_rmse']:.4f} |",
        f"| gate rows | {reg['gate_rmse']:.4f} |",
        f"| optimism (gate - selection) | {reg['gate_rmse'] - reg['val_rmse']:+.4f} |",
        f"| the champion before, on the same gate rows | {champion} |",
        "",
        f"{decision_line(reg['decision'], reg['reason'])}.",
    ]


def decision_line(decision: str, reason: str) -> str:
    """The decision in bold, then its reason without the decision's name a second time ("champion: champion: ...")."""
    return f"Decision: **{decision}**: {reason.removeprefix(f'{decision}: ')}"


def _drift_lines(reg: dict) -> list[str]:
    """The drift table: each feature's distance from the reference month and its limit."""
    lines = [f"Against {reg['reference_month']}, the validation month: the two months a model rests on must agree, "
             f"or one of them is broken{'; drift accepted' if reg['accept_drift'] else ''}.", "",
             "| feature | distance | value | limit | drifted |", "|---|---|---:|---:|---|"]
    lines += [f"| {m['feature']} | {m['method']} | {m['distance']:.4f} | {m['limit']:g} | "
              f"{'**yes**' if m['over'] else 'no'} |" for m in reg["drift"]]
    return lines + ["", f"![drift]({DRIFT_PLOT})"]


def _checks_lines(data: dict) -> list[str]:
    """Each data check's failing share, for both months."""
    checks = list(data["train"]["checks"])
    lines = [f"| check | {data['train_month']} | {data['valid_month']} |", "|---|---:|---:|"]
    return lines + [f"| {check} | {100 * data['train']['checks'][check]:.2f}% | "
                    f"{100 * data['valid']['checks'][check]:.2f}% |" for check in checks]


def markdown(summary: dict) -> str:
    """The run summary as markdown: data and its checks, scores, the champion decision, drift, tuning, parameters
    and timings."""
    reg, data = summary["registration"], summary["data"]
    lines = [
        f"# {reg['name']} v{reg['version']}: {reg['decision']}",
        "",
        f"Trained on {data['train_month']}, validated on {data['valid_month']} ({summary['color']} taxi), feature set "
        f"`{reg['feature_set']}`. Run `{reg['run_id']}`, model `{reg['model_uri']}`.",
        "",
        "| month | source | rows raw | rows clean | dropped |",
        "|---|---|---:|---:|---:|",
    ]
    for key in ("train", "valid"):
        m = data[key]
        lines.append(f"| {m['month']} | `{m['source_url']}` | {m['rows_raw']:,} | {m['rows_clean']:,} | "
                     f"{100 * dropped_share(m['rows_raw'], m['rows_clean']):.1f}% |")
    lines += ["", "## Data checks", "", *_checks_lines(data),
              "", "## Champion decision", "", *_evidence_lines(reg, data["valid_month"]),
              f"The training RMSE was {summary['train_rmse']:.4f}.",
              "", "## Drift", "", *_drift_lines(reg),
              "", "## Tuning", *_tuning_lines(summary["tuning"]),
              "", f"## Best parameters ({summary['tuning']['num_boost_round']} rounds)", "",
              "| parameter | value |", "|---|---:|"]
    lines += [f"| {k} | {_value(v)} |" for k, v in sorted(summary["tuning"]["params"].items())]
    lines += ["", "## Timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in summary["timings"].items()]
    lines += ["", "## Plots (gate rows)", ""] + [f"![{name[:-4]}]({name})" for name in REPORT_PLOTS]
    return "\n".join(lines) + "\n"
