"""The per-run report: a markdown summary and PNG plots (pure: no luigi)."""

from __future__ import annotations

import io

import numpy as np

from taxi.data import dropped_share
from taxi.layout import REPORT, REPORT_PLOTS, TUNING_PLOT
from taxi.tuning import pruned_count



def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plots(y_true: np.ndarray, y_pred: np.ndarray, importances: dict[str, float], top: int = 20) -> dict[str, bytes]:
    """PNG bytes for predicted-vs-actual, the residual histogram and the top feature importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib loads in seconds: only when plotting

    fig, ax = plt.subplots(figsize=(7, 6))
    cells = ax.hexbin(y_true, y_pred, gridsize=60, bins="log", cmap="viridis", extent=(0, 60, 0, 60), mincnt=1)
    fig.colorbar(cells, ax=ax, label="trips per cell (log scale)")
    ax.plot([0, 60], [0, 60], color="red", linewidth=1)
    ax.set(xlabel="actual duration (min)", ylabel="predicted duration (min)", title="Validation: predicted vs actual")
    predicted_vs_actual = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(y_pred - y_true, bins=120, range=(-40, 40), color="steelblue")
    ax.set(xlabel="predicted - actual (min)", ylabel="trips", title="Validation residuals")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def build(color: str, registration: dict, trained: dict, tuning: dict, stats: dict[str, dict], y_valid: np.ndarray,
          y_pred: np.ndarray, importances: dict[str, float], register_seconds: float) -> dict[str, bytes]:
    """Every file of a run's report (layout.REPORT_FILES), as bytes by name, from the run's records (registration,
    training, tuning, the months' stats), the validation month's predictions and the feature importances."""
    summary = {
        "color": color, "registration": registration, "train_rmse": trained["train_rmse"], "tuning": tuning,
        "data": {"train_month": stats["train"]["month"], "valid_month": stats["valid"]["month"],
                 "train": stats["train"], "valid": stats["valid"]},
        "timings": {"download (train, valid)": stats["train"]["seconds"] + stats["valid"]["seconds"],
                    "clean (train, valid)": stats["train"]["clean_seconds"] + stats["valid"]["clean_seconds"],
                    "tune": tuning["seconds"], "train + log": trained["seconds"],
                    "register + report": register_seconds},
    }
    return {REPORT: markdown(summary).encode(), **plots(y_valid, y_pred, importances),
            TUNING_PLOT: tuning_plot(tuning["history"], tuning["course_val_rmse"])}


def _tuning_lines(tuning: dict) -> list[str]:
    """The search in a few lines: trials, pruned, warm start, and the course's parameters on the same sample."""
    pruned = pruned_count(tuning["history"])
    course = tuning["course_val_rmse"]
    line = (f"{tuning['trials']} trials ({pruned} pruned) in {tuning['search_seconds']:.1f} s; "
            f"{tuning['warm_start']['note']}; best validation RMSE on the trial sample {tuning['val_rmse']:.4f}"
            + ("" if course is None else f", the course's fixed parameters {course:.4f}") + ".")
    return ["", line, "", f"![tuning]({TUNING_PLOT})"]


def _value(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _decision_text(reg: dict, valid_month: str) -> str:
    """What the decision did to the aliases, and why."""
    previous = reg["previous_champion_version"]
    if previous is None:
        return "there was no champion, so this version is the champion"
    scores = f"{reg['val_rmse']:.4f} against {reg['previous_champion_val_rmse']:.4f} on {valid_month}"
    if reg["decision"] == "champion":
        return f"it beats champion v{previous} ({scores}) and takes the champion alias"
    return f"champion v{previous} stays ({scores}); this version takes the challenger alias"


def markdown(summary: dict) -> str:
    """The run summary as markdown: data, scores, champion decision, parameters and timings."""
    reg, data = summary["registration"], summary["data"]
    champion = ("none (first version)" if reg["previous_champion_version"] is None else
                f"v{reg['previous_champion_version']}: {reg['previous_champion_val_rmse']:.4f}")
    lines = [
        f"# {reg['name']} v{reg['version']}: {reg['decision']}",
        "",
        f"Trained on {data['train_month']}, validated on {data['valid_month']} ({summary['color']} taxi).",
        "",
        "| month | source | rows raw | rows clean | dropped |",
        "|---|---|---:|---:|---:|",
    ]
    for key in ("train", "valid"):
        m = data[key]
        lines.append(f"| {m['month']} | `{m['source_url']}` | {m['rows_raw']:,} | {m['rows_clean']:,} | "
                     f"{100 * dropped_share(m['rows_raw'], m['rows_clean']):.1f}% |")
    lines += [
        "",
        "| RMSE (minutes) | value |",
        "|---|---:|",
        f"| train | {summary['train_rmse']:.4f} |",
        f"| validation | {reg['val_rmse']:.4f} |",
        f"| champion before this run, same validation month | {champion} |",
        "",
        f"Decision: **{reg['decision']}**: {_decision_text(reg, data['valid_month'])} (run `{reg['run_id']}`, "
        f"model `{reg['model_uri']}`).",
        "",
        "## Tuning",
        *_tuning_lines(summary["tuning"]),
        "",
        f"## Best parameters ({summary['tuning']['num_boost_round']} rounds)",
        "",
        "| parameter | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {_value(v)} |" for k, v in sorted(summary["tuning"]["params"].items())]
    lines += ["", "## Timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in summary["timings"].items()]
    lines += ["", "## Plots", ""] + [f"![{name[:-4]}]({name})" for name in REPORT_PLOTS]
    return "\n".join(lines) + "\n"
