"""The run form checked against the pipeline's own task parameters, in a process of its own (the web process never
imports the pipeline): `python -m taxi.web.plan describe` prints the form's model fields as JSON;
`python -m taxi.web.plan check` reads a submitted form as JSON on stdin and prints either {"errors": {field:
message}} or the run: the `luigi` arguments, the root task's id and a title.

A form is {"color": ..., "first": "YYYY-MM", "last": "YYYY-MM" or "", "tuning": {parameter: value}}, the parameters
BuildFeatures' feature set and TuneHyperparams' own. One month runs `RegisterModel` (the README's command); a range
runs `RangeMonthly` over `RegisterMonth` (scripts/backfill's command). Values that differ from the configured ones
become `--BuildFeatures-...` and `--TuneHyperparams-...` arguments, one value per argument.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import luigi
from luigi.cmdline_parser import CmdlineParser

from taxi import data, tasks

MONTH_PARAMS = ("color", "year", "month")
GENERAL = "general"  # the error key of what no single field caused
KINDS = ((luigi.BoolParameter, "bool"), (luigi.ChoiceParameter, "choice"), (luigi.IntParameter, "int"),
         (luigi.FloatParameter, "float"))
EXPECTED = {"bool": "true or false", "int": "a whole number", "float": "a number", "choice": "one of the choices"}


FEATURE_PARAMS = ("feature_set",)  # what the form offers of BuildFeatures


def tuning_params() -> dict[str, luigi.Parameter]:
    """The form's model settings by name: BuildFeatures' feature set, then TuneHyperparams' own parameters, less the
    month ones."""
    features = {name: param for name, param in tasks.BuildFeatures.get_params() if name in FEATURE_PARAMS}
    return {**features, **{name: param for name, param in tasks.TuneHyperparams.get_params()
                           if name not in MONTH_PARAMS}}


def family_of(name: str) -> type[luigi.Task]:
    """The task whose parameter a form field is."""
    return tasks.BuildFeatures if name in FEATURE_PARAMS else tasks.TuneHyperparams


def kind(param: luigi.Parameter) -> str:
    return next((name for cls, name in KINDS if isinstance(param, cls)), "text")


def choices(param: luigi.Parameter) -> list[str] | None:
    """The values a choice or bool parameter takes, as it writes them (None for any other kind)."""
    if kind(param) == "bool":
        return [param.serialize(True), param.serialize(False)]
    return sorted(param.serialize(c) for c in param._choices) if kind(param) == "choice" else None


def configured(name: str, param: luigi.Parameter) -> str:
    """The value a run gets without an override: luigi.cfg's [BuildFeatures] or [TuneHyperparams], or the code's
    default."""
    return param.serialize(param.task_value(family_of(name).get_task_family(), name))


def describe() -> dict:
    """The form's colors and model fields (name, kind, configured value, description, choices)."""
    fields = [{"name": name, "kind": kind(param), "default": configured(name, param),
               "description": param.description or "",
               "choices": choices(param)}
              for name, param in tuning_params().items()]
    return {"colors": list(data.COLORS), "tuning": fields}


def check_months(form: dict, errors: dict[str, str]) -> list[dt.date]:
    """The first and last training months of the form (the last may be left empty), each checked like a task's."""
    months = []
    for field in ("first", "last"):
        raw = str(form.get(field, "")).strip()
        if field == "last" and not raw:
            continue
        try:
            month = luigi.MonthParameter().parse(raw)
        except ValueError:
            errors[field] = f"{raw!r} is not a month: write it as YYYY-MM, e.g. 2021-01"
            continue
        try:
            data.validate_month(form.get("color", ""), month.year, month.month, needs_next_month=True)
        except ValueError as exc:
            errors["color" if form.get("color") not in data.COLORS else field] = str(exc)
            continue
        months.append(month)
    if len(months) == 2 and months[1] < months[0]:
        errors["last"] = f"the last month {months[1]:%Y-%m} is before the first {months[0]:%Y-%m}"
    return months


def check_tuning(form: dict, month: dt.date | None, errors: dict[str, str]) -> dict[str, str]:
    """The model values that differ from the configured ones, each parsed by its parameter and, for a valid month,
    checked by its task itself."""
    params, overrides = tuning_params(), {}
    for name, raw in dict(form.get("tuning") or {}).items():
        param, raw = params.get(name), str(raw).strip()
        if param is None:
            errors[name] = f"{name} is not a parameter the form offers"
            continue
        try:
            value = param.normalize(param.parse(raw))
        except (ValueError, TypeError):
            listed = f": {', '.join(choices(param))}" if kind(param) == "choice" else ""
            errors[name] = f"{raw!r} is not {EXPECTED.get(kind(param), 'a value')}{listed}"
            continue
        if param.serialize(value) == configured(name, param):
            continue
        if month is not None:
            try:
                family_of(name)(color=form["color"], year=month.year, month=month.month, **{name: value})
            except ValueError as exc:
                errors[name] = str(exc)
                continue
        overrides[name] = param.serialize(value)
    return overrides


def luigi_args(color: str, months: list[dt.date], overrides: dict[str, str], now: dt.datetime) -> list[str]:
    """The `luigi` arguments of the run: RegisterModel for one month, RangeMonthly as scripts/backfill for more."""
    first, last = months[0], months[-1]
    if first == last:
        args = ["RegisterModel", "--color", color, "--year", str(first.year), "--month", str(first.month)]
    else:
        stop = dt.date(*data.next_month(last.year, last.month), 1)  # RangeMonthly's stop is exclusive
        back = (now.year - first.year) * 12 + now.month - first.month + 1  # reach back to the first month
        args = ["RangeMonthly", "--of", "RegisterMonth", "--of-params", json.dumps({"color": color}),
                "--param-name", "month", "--start", f"{first:%Y-%m}", "--stop", f"{stop:%Y-%m}",
                "--months-back", str(back), "--now", str(int(now.timestamp()))]
    for name, value in overrides.items():
        args += [f"--{family_of(name).get_task_family()}-{name.replace('_', '-')}", value]
    return ["--module", "taxi.tasks", *args]


def check(form: dict) -> dict:
    """{"errors": {field: message}} for a form that must not run, else {"argv", "task_id", "title"}."""
    errors: dict[str, str] = {}
    months = check_months(form, errors)
    overrides = check_tuning(form, months[0] if months and "color" not in errors else None, errors)
    if errors:
        return {"errors": errors}
    argv = luigi_args(form["color"], months, overrides, dt.datetime.now(dt.timezone.utc))
    try:
        with CmdlineParser.global_instance(argv[2:]) as parser:  # as `luigi` will parse it
            root = parser.get_task_obj()
            for month in months:  # the overrides together, as the run's TuneHyperparams tasks will have them
                tasks.TuneHyperparams(color=form["color"], year=month.year, month=month.month)
    except Exception as exc:  # whatever the command would fail with, said before anything starts
        return {"errors": {GENERAL: f"{type(exc).__name__}: {exc}"}}
    span = f"{months[0]:%Y-%m}" + (f" to {months[-1]:%Y-%m}" if len(months) > 1 and months[0] != months[-1] else "")
    return {"argv": argv, "task_id": root.task_id, "title": f"{form['color']} {span}", "overrides": overrides}


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "describe":
        print(json.dumps(describe()))
    elif command == "check":
        print(json.dumps(check(json.load(sys.stdin))))
    else:
        sys.exit("usage: python -m taxi.web.plan describe | check < form.json")


if __name__ == "__main__":
    main()
